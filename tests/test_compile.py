"""torch.compile(fullgraph=True) on a model built from the layers: no graph break, forward and backward
match eager, the compiled graphs call the hand-written ops (forward and backward), and dynamic batch
sizes do not recompile. Inductor (CPU, compiles C++) once; the rest on the aot_eager backend."""
import pytest
import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.testing import CompileCounterWithBackend

import torch_manualbp

ops = torch.ops.torch_manualbp


class TwoLayerNet(torch.nn.Module):
    """LinearSigmoid -> LinearSigmoid (logits) -> SoftmaxCrossEntropyLoss."""

    def __init__(self, in_features=6, hidden=8, classes=5, **loss_options):
        super().__init__()
        self.hidden = torch_manualbp.LinearSigmoid(in_features, hidden)
        self.out = torch_manualbp.LinearSigmoid(hidden, classes, bias=False)
        self.loss = torch_manualbp.SoftmaxCrossEntropyLoss(**loss_options)

    def forward(self, input, target):
        return self.loss(self.out(self.hidden(input)), target)


def _batch(rows, dtype=torch.float32, classes=5):
    return torch.randn(rows, 6, dtype=dtype), torch.randint(0, classes, (rows,))


def _loss_and_grads(model, *inputs):
    model.zero_grad()
    loss = model(*inputs)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _assert_matches_eager(compiled, model, *inputs):
    loss, grads = _loss_and_grads(compiled, *inputs)
    expected_loss, expected_grads = _loss_and_grads(model, *inputs)
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(grads, expected_grads)


def test_inductor_matches_eager():
    torch._dynamo.reset()
    model = TwoLayerNet()
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    _assert_matches_eager(compiled, model, *_batch(7))


def _graph_recorder():
    """An aot_eager-like backend that keeps the forward and backward FX graphs it was given."""
    graphs = {"forward": [], "backward": []}

    def keep(kind):
        def compiler(graph_module, example_inputs):
            graphs[kind].append(graph_module)
            return make_boxed_func(graph_module.forward)

        return compiler

    return aot_autograd(fw_compiler=keep("forward"), bw_compiler=keep("backward")), graphs


def _targets(graph_module):
    return {node.target for node in graph_module.graph.nodes if node.op == "call_function"}


def test_graphs_call_the_handwritten_ops():
    torch._dynamo.reset()
    backend, graphs = _graph_recorder()
    model = TwoLayerNet()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    _assert_matches_eager(compiled, model, *_batch(7))
    assert len(graphs["forward"]) == 1 and len(graphs["backward"]) == 1
    forward, backward = _targets(graphs["forward"][0]), _targets(graphs["backward"][0])
    assert {ops.linear_sigmoid_forward.default, ops.softmax_cross_entropy_forward.default} <= forward
    assert {ops.linear_sigmoid_backward.default, ops.softmax_cross_entropy_backward.default} <= backward


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_dynamic_batch_sizes_compile_once(dtype):
    """Dynamo specializes sizes 0 and 1 by design; every other batch size shares one graph."""
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    model = TwoLayerNet().to(dtype)
    compiled = torch.compile(model, fullgraph=True, backend=counter, dynamic=True)
    _assert_matches_eager(compiled, model, *_batch(3, dtype))
    compiles = counter.frame_count  # one frame (Dynamo may restart its analysis once: not a recompile)
    for rows in (8, 2, 17):
        _assert_matches_eager(compiled, model, *_batch(rows, dtype))
    assert counter.frame_count == compiles


def test_empty_and_single_row_batches():
    torch._dynamo.reset()
    model = TwoLayerNet(reduction="sum")
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=True)
    _assert_matches_eager(compiled, model, *_batch(1))
    loss, grads = _loss_and_grads(compiled, *_batch(0))
    torch.testing.assert_close(loss, torch.tensor(0.0))
    torch.testing.assert_close(grads, [torch.zeros_like(p) for p in model.parameters()])


# Options of the loss, each compiled with its own model: (loss options, target maker)
LOSS_OPTIONS = [
    dict(reduction="none", label_smoothing=0.1),
    dict(weight=torch.rand(5) + 0.5, ignore_index=2, reduction="mean"),
    dict(reduction="sum", label_smoothing=0.2),
]


@pytest.mark.parametrize("options", LOSS_OPTIONS, ids=lambda o: ",".join(sorted(o)))
def test_loss_options(options):
    torch._dynamo.reset()
    model = TwoLayerNet(**options)
    compiled = torch.compile(lambda *inputs: model(*inputs).sum(), fullgraph=True, backend="aot_eager")
    input, target = _batch(9)
    target[0] = 2
    loss = compiled(input, target)
    expected_loss = model(input, target).sum()
    torch.testing.assert_close(loss, expected_loss)
    parameters = list(model.parameters())
    torch.testing.assert_close(torch.autograd.grad(loss, parameters), torch.autograd.grad(expected_loss, parameters))


def test_probability_targets_and_spatial_dims():
    """(N, C, d) logits from a LinearSigmoid over (N, d, in) inputs, against soft targets that need grad."""
    torch._dynamo.reset()
    layer = torch_manualbp.LinearSigmoid(4, 5)
    input = torch.randn(3, 2, 4)
    target = torch.rand(3, 5, 2).softmax(1).requires_grad_()

    def fn(input, target):
        logits = layer(input).transpose(1, 2)
        return torch_manualbp.functional.softmax_cross_entropy(logits, target, label_smoothing=0.1)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    wrt = (target, layer.weight, layer.bias)
    torch.testing.assert_close(
        torch.autograd.grad(compiled(input, target), wrt), torch.autograd.grad(fn(input, target), wrt)
    )


def test_functional_with_leading_dims_and_broadcast_bias():
    torch._dynamo.reset()
    input = torch.randn(2, 3, 4, requires_grad=True)
    weight = torch.randn(5, 4, requires_grad=True)
    bias = torch.randn(3, 5, requires_grad=True)

    def fn(input, weight, bias):
        return torch_manualbp.functional.linear_sigmoid(input, weight, bias).sum()

    compiled_grads = torch.autograd.grad(
        torch.compile(fn, fullgraph=True, backend="aot_eager")(input, weight, bias), (input, weight, bias)
    )
    torch.testing.assert_close(compiled_grads, torch.autograd.grad(fn(input, weight, bias), (input, weight, bias)))


class LanguageHead(torch.nn.Module):
    """LinearSigmoid -> LinearCrossEntropyLoss over (batch, time, features) inputs."""

    def __init__(self, in_features=6, hidden=8, classes=37, **loss_options):
        super().__init__()
        self.hidden = torch_manualbp.LinearSigmoid(in_features, hidden)
        self.head = torch_manualbp.LinearCrossEntropyLoss(hidden, classes, bias=True, **loss_options)

    def forward(self, input, target):
        loss = self.head(self.hidden(input), target)
        return loss.sum() if loss.dim() else loss


def _tokens(batch, time=5, classes=37):
    return torch.randn(batch, time, 6), torch.randint(0, classes, (batch, time))


def test_linear_cross_entropy_inductor_matches_eager():
    torch._dynamo.reset()
    model = LanguageHead(label_smoothing=0.1, softcap=5.0, lse_square_scale=1e-2, chunk_budget=37 * 4 * 3)
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    _assert_matches_eager(compiled, model, *_tokens(4))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_cross_entropy_graphs(reduction):
    """A scalar reduction: the forward graph computes the gradients ahead and the backward graph only scales
    them (no backward op); 'none': the backward graph calls the backward op with the upstream gradient."""
    torch._dynamo.reset()
    backend, graphs = _graph_recorder()
    model = LanguageHead(reduction=reduction, ignore_index=3)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    _assert_matches_eager(compiled, model, *_tokens(3))
    forward, backward = _targets(graphs["forward"][0]), _targets(graphs["backward"][0])
    assert ops.linear_cross_entropy_forward.default in forward
    assert (ops.linear_cross_entropy_backward.default in backward) == (reduction == "none")


def test_linear_cross_entropy_dynamic_token_counts_compile_once():
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    model = LanguageHead()
    compiled = torch.compile(model, fullgraph=True, backend=counter, dynamic=True)
    _assert_matches_eager(compiled, model, *_tokens(3))
    compiles = counter.frame_count
    for batch in (8, 2, 5):
        _assert_matches_eager(compiled, model, *_tokens(batch))
    assert counter.frame_count == compiles
