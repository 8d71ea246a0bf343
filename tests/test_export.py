"""torch.export.export of a model built from the layers: the exported program calls the ops, matches
eager for other batch sizes (a dynamic batch dim), survives save/load and run_decompositions, in
strict and non-strict tracing."""
import io

import pytest
import torch
from torch.export import Dim

import torch_manualbp

ops = torch.ops.torch_manualbp


class TwoLayerNet(torch.nn.Module):
    """LinearSigmoid -> LinearSigmoid (logits) -> SoftmaxCrossEntropyLoss."""

    def __init__(self, in_features=6, hidden=8, classes=5):
        super().__init__()
        self.hidden = torch_manualbp.LinearSigmoid(in_features, hidden)
        self.out = torch_manualbp.LinearSigmoid(hidden, classes, bias=False)
        self.loss = torch_manualbp.SoftmaxCrossEntropyLoss(
            weight=torch.rand(classes) + 0.5, ignore_index=0, label_smoothing=0.1
        )

    def forward(self, input, target):
        return self.loss(self.out(self.hidden(input)), target)


def _batch(rows):
    return torch.randn(rows, 6), torch.randint(0, 5, (rows,))


def _targets(program):
    return [node.target for node in program.graph.nodes if node.op == "call_function"]


def _export(model, strict=False):
    batch = Dim("batch")
    return torch.export.export(model, _batch(4), dynamic_shapes=({0: batch}, {0: batch}), strict=strict)


@pytest.mark.parametrize("strict", [False, True], ids=["non_strict", "strict"])
def test_export_matches_eager(strict):
    model = TwoLayerNet().eval()
    program = _export(model, strict)
    targets = _targets(program)
    assert targets.count(ops.linear_sigmoid_forward.default) == 2
    assert targets.count(ops.softmax_cross_entropy_forward.default) == 1
    for rows in (4, 9, 2):
        batch = _batch(rows)
        torch.testing.assert_close(program.module()(*batch), model(*batch))


def test_export_save_load_and_decompositions():
    model = TwoLayerNet().eval()
    program = _export(model)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    decomposed = program.run_decompositions()
    # Opaque ops: not decomposed.
    assert {ops.linear_sigmoid_forward.default, ops.softmax_cross_entropy_forward.default} <= set(_targets(decomposed))
    batch = _batch(5)
    for exported in (loaded, decomposed):
        torch.testing.assert_close(exported.module()(*batch), model(*batch))


def test_exported_program_trains():
    """The module of an exported program is differentiable: the ops' registered autograd."""
    model = TwoLayerNet()
    exported = torch.export.export(model, _batch(4)).module()
    batch = _batch(4)
    exported(*batch).backward()
    model(*batch).backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(exported.get_parameter(name).grad, parameter.grad)


class LanguageHead(torch.nn.Module):
    """LinearSigmoid -> LinearCrossEntropyLoss with class weights, an ignored class, smoothing, softcap, z-loss."""

    def __init__(self, classes=29):
        super().__init__()
        self.hidden = torch_manualbp.LinearSigmoid(6, 8)
        self.head = torch_manualbp.LinearCrossEntropyLoss(
            8, classes, bias=True, weight=torch.rand(classes) + 0.5, ignore_index=0, label_smoothing=0.1,
            softcap=4.0, lse_square_scale=1e-3,
        )

    def forward(self, input, target):
        return self.head(self.hidden(input), target)


def _tokens(rows):
    return torch.randn(rows, 6), torch.randint(0, 29, (rows,))


def test_linear_cross_entropy_exports_saves_and_trains():
    model = LanguageHead()
    batch = Dim("batch")
    program = torch.export.export(model.eval(), _tokens(4), dynamic_shapes=({0: batch}, {0: batch}))
    assert _targets(program).count(ops.linear_cross_entropy_forward.default) == 1
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    for rows in (4, 11, 2):
        inputs = _tokens(rows)
        torch.testing.assert_close(loaded.module()(*inputs), model(*inputs))
    trained = torch.export.export(model.train(), _tokens(4)).module()
    inputs = _tokens(4)
    trained(*inputs).backward()
    model(*inputs).backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(trained.get_parameter(name).grad, parameter.grad)
