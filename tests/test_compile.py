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
    def __init__(self, in_features=6, hidden=8, classes=5):
        super().__init__()
        self.hidden = torch_manualbp.LinearSigmoid(in_features, hidden)
        self.out = torch_manualbp.LinearSigmoid(hidden, classes, bias=False)

    def forward(self, input):
        return self.out(self.hidden(input)).square().mean()


def _loss_and_grads(model, input):
    model.zero_grad()
    loss = model(input)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _assert_matches_eager(compiled, model, input):
    loss, grads = _loss_and_grads(compiled, input)
    expected_loss, expected_grads = _loss_and_grads(model, input)
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(grads, expected_grads)


def test_inductor_matches_eager():
    torch._dynamo.reset()
    model = TwoLayerNet()
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    _assert_matches_eager(compiled, model, torch.randn(7, 6))


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
    _assert_matches_eager(compiled, model, torch.randn(7, 6))
    assert len(graphs["forward"]) == 1 and len(graphs["backward"]) == 1
    assert ops.linear_sigmoid_forward.default in _targets(graphs["forward"][0])
    assert ops.linear_sigmoid_backward.default in _targets(graphs["backward"][0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_dynamic_batch_sizes_compile_once(dtype):
    """Dynamo specializes sizes 0 and 1 by design; every other batch size shares one graph."""
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    model = TwoLayerNet().to(dtype)
    compiled = torch.compile(model, fullgraph=True, backend=counter, dynamic=True)
    for batch in (3, 8, 2):
        _assert_matches_eager(compiled, model, torch.randn(batch, 6, dtype=dtype))
    assert counter.frame_count == 1


def test_empty_and_single_row_batches():
    torch._dynamo.reset()
    model = TwoLayerNet()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=True)
    _assert_matches_eager(compiled, model, torch.randn(1, 6))
    empty = torch.randn(0, 6, requires_grad=True)
    hidden = torch.compile(torch_manualbp.functional.linear_sigmoid, fullgraph=True, backend="aot_eager")(
        empty, model.hidden.weight, model.hidden.bias
    )
    assert hidden.shape == (0, 8)
    grad_input, grad_bias = torch.autograd.grad(hidden.sum(), (empty, model.hidden.bias))
    assert grad_input.shape == (0, 6)
    torch.testing.assert_close(grad_bias, torch.zeros(8))


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
