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
    def __init__(self, in_features=6, hidden=8, classes=5):
        super().__init__()
        self.hidden = torch_manualbp.LinearSigmoid(in_features, hidden)
        self.out = torch_manualbp.LinearSigmoid(hidden, classes, bias=False)

    def forward(self, input):
        return self.out(self.hidden(input))


def _targets(program):
    return [node.target for node in program.graph.nodes if node.op == "call_function"]


@pytest.mark.parametrize("strict", [False, True], ids=["non_strict", "strict"])
def test_export_matches_eager(strict):
    model = TwoLayerNet().eval()
    batch = Dim("batch")
    program = torch.export.export(model, (torch.randn(4, 6),), dynamic_shapes=({0: batch},), strict=strict)
    assert _targets(program).count(ops.linear_sigmoid_forward.default) == 2
    for rows in (4, 9, 2):
        input = torch.randn(rows, 6)
        torch.testing.assert_close(program.module()(input), model(input))


def test_export_save_load_and_decompositions():
    model = TwoLayerNet().eval()
    program = torch.export.export(model, (torch.randn(4, 6),), dynamic_shapes=({0: Dim("batch")},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    decomposed = program.run_decompositions()
    assert ops.linear_sigmoid_forward.default in _targets(decomposed)  # an opaque op: not decomposed
    input = torch.randn(5, 6)
    for exported in (loaded, decomposed):
        torch.testing.assert_close(exported.module()(input), model(input))


def test_exported_program_trains():
    """The module of an exported program is differentiable: the ops' registered autograd."""
    model = TwoLayerNet()
    program = torch.export.export(model, (torch.randn(4, 6),))
    exported = program.module()
    input = torch.randn(4, 6)
    exported(input).sum().backward()
    model(input).sum().backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(exported.get_parameter(name).grad, parameter.grad)
