"""Every backward asks its kernels for exactly the gradients whose inputs require grad: the backward ops'
output_mask (and the grad_mask of LinearCrossEntropy's forward op, which computes gradients ahead) equals the
inputs' requires_grad, for every subset of them. A gradient asked for but not needed still comes out right
(autograd drops it), so only these tests see the wasted GEMMs and passes.

Two paths per layer:
  eager      the Function, which calls its ops below autograd: LinearSigmoid through
             torch_manualbp._C.linear_sigmoid_*_below_autograd (C++), the cross-entropies through call_kernel;
             spied on by wrapping the names the layer modules look up at call time.
  torch.ops  the op called directly (its autograd registered with register_autograd), seen by a
             TorchDispatchMode; and torch.compile, whose forward and backward graphs are read.
"""
import itertools

import pytest
import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd
from torch.utils._python_dispatch import TorchDispatchMode

import torch_manualbp
from torch_manualbp.functional import linear_cross_entropy, linear_sigmoid, softmax_cross_entropy
from torch_manualbp.layers import linear_cross_entropy as lce_layer
from torch_manualbp.layers import softmax_cross_entropy as sce_layer

ops = torch.ops.torch_manualbp
LS_BACKWARD = ops.linear_sigmoid_backward.default
SCE_BACKWARD = ops.softmax_cross_entropy_backward.default
LCE_FORWARD = ops.linear_cross_entropy_forward.default
LCE_BACKWARD = ops.linear_cross_entropy_backward.default
# Where each op takes its mask: the last argument but one (LinearCrossEntropy: before chunk_budget) or last.
MASK_ARGUMENT = {LS_BACKWARD: 5, SCE_BACKWARD: 10, LCE_FORWARD: 10, LCE_BACKWARD: 11}


def subsets(count):
    """Every assignment of requires_grad to `count` inputs with at least one True."""
    return [needs for needs in itertools.product([False, True], repeat=count) if any(needs)]


def _ids(needs_list, names):
    return ["+".join(n for n, need in zip(names, needs) if need) for needs in needs_list]


class OpSpy(TorchDispatchMode):
    """Records (op, mask) of every call of the watched ops that reaches the dispatcher."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MASK_ARGUMENT:
            self.calls.append((func, list(args[MASK_ARGUMENT[func]])))
        return func(*args, **(kwargs or {}))


def _spy_on_call_kernel(monkeypatch, layer_module):
    """Wraps the call_kernel a layer module uses; returns the list of (op, mask) it is asked to run."""
    calls = []
    real = layer_module.call_kernel

    def spy(op, *args):
        if op in MASK_ARGUMENT:
            calls.append((op, list(args[MASK_ARGUMENT[op]])))
        return real(op, *args)

    monkeypatch.setattr(layer_module, "call_kernel", spy)
    return calls


def _compiled_graph_masks(fn, *args):
    """fn compiled (fullgraph, aot_eager-like backend) and run forward + backward on args: the (op, mask) of
    the watched ops in its forward graph and in its backward graph."""
    torch._dynamo.reset()
    graphs = []

    def keep(graph_module, example_inputs):
        graphs.append(graph_module)
        return make_boxed_func(graph_module.forward)

    compiled = torch.compile(fn, fullgraph=True, backend=aot_autograd(fw_compiler=keep, bw_compiler=keep))
    compiled(*args).sum().backward()
    assert len(graphs) == 2, "expected one forward and one backward graph"
    return [
        [(node.target, list(node.args[MASK_ARGUMENT[node.target]])) for node in graph.graph.nodes
         if node.op == "call_function" and node.target in MASK_ARGUMENT]
        for graph in graphs
    ]


# ---- LinearSigmoid: linear_sigmoid_backward's output_mask = (input, weight, bias) ---------------------------


def _linear_sigmoid_leaves(needs, bias):
    x, w, b = torch.randn(4, 3), torch.randn(5, 3), torch.randn(5) if bias else None
    return [None if t is None else t.requires_grad_(need) for t, need in zip((x, w, b), needs)]


LS_CASES = [(needs, True) for needs in subsets(3)] + [((*needs, False), False) for needs in subsets(2)]
LS_IDS = [name + ("" if bias else ", no bias") for name, (_, bias) in zip(_ids([c[0] for c in LS_CASES], "xwb"), LS_CASES)]


def _linear_sigmoid_mask(needs, bias):
    return [needs[0], needs[1], bias and needs[2]]


@pytest.mark.parametrize("needs,bias", LS_CASES, ids=LS_IDS)
def test_linear_sigmoid_eager_backward_asks_for_what_requires_grad(monkeypatch, needs, bias):
    masks = []
    name = "linear_sigmoid_backward_below_autograd"
    real = getattr(torch_manualbp._C, name)
    monkeypatch.setattr(torch_manualbp._C, name, lambda *args: masks.append(list(args[5])) or real(*args))
    leaves = _linear_sigmoid_leaves(needs, bias)
    linear_sigmoid(*leaves).sum().backward()
    assert masks == [_linear_sigmoid_mask(needs, bias)]
    # create_graph: the backward op through its own Function (torch.ops), the same mask.
    leaves = _linear_sigmoid_leaves(needs, bias)
    with OpSpy() as spy:
        torch.autograd.grad(linear_sigmoid(*leaves).sum(), [t for t in leaves if t is not None and t.requires_grad],
                            create_graph=True)
    assert spy.calls == [(LS_BACKWARD, _linear_sigmoid_mask(needs, bias))]


@pytest.mark.parametrize("needs,bias", LS_CASES, ids=LS_IDS)
def test_linear_sigmoid_torch_ops_backward_asks_for_what_requires_grad(needs, bias):
    leaves = _linear_sigmoid_leaves(needs, bias)
    with OpSpy() as spy:
        ops.linear_sigmoid_forward(*leaves).sum().backward()
    assert spy.calls == [(LS_BACKWARD, _linear_sigmoid_mask(needs, bias))]
    forward_graph, backward_graph = _compiled_graph_masks(linear_sigmoid, *_linear_sigmoid_leaves(needs, bias))
    assert forward_graph == [] and backward_graph == [(LS_BACKWARD, _linear_sigmoid_mask(needs, bias))]


# ---- SoftmaxCrossEntropy: softmax_cross_entropy_backward's output_mask = (input, target) ---------------------
# Index targets have no gradient: only the input can require one. Class weights never get one (refused).

SCE_CASES = [("index", (True, False))] + [("probability", needs) for needs in subsets(2)]
SCE_IDS = [f"{kind}-{name}" for (kind, _), name in zip(SCE_CASES, _ids([c[1] for c in SCE_CASES], ["x", "target"]))]


def _cross_entropy_leaves(kind, needs, shape):
    x = torch.randn(shape).requires_grad_(needs[0])
    if kind == "index":
        return x, torch.randint(0, shape[1], shape[:1] + shape[2:])
    return x, torch.rand(shape).requires_grad_(needs[1])


@pytest.mark.parametrize("shape", [(4, 5), (2, 5, 3)], ids=["rows", "spatial"])
@pytest.mark.parametrize("kind,needs", SCE_CASES, ids=SCE_IDS)
def test_softmax_cross_entropy_eager_backward_asks_for_what_requires_grad(monkeypatch, kind, needs, shape):
    calls = _spy_on_call_kernel(monkeypatch, sce_layer)
    for reduction in ("mean", "none"):
        calls.clear()
        softmax_cross_entropy(*_cross_entropy_leaves(kind, needs, shape), reduction=reduction).sum().backward()
        assert calls == [(SCE_BACKWARD, list(needs))], reduction


@pytest.mark.parametrize("kind,needs", SCE_CASES, ids=SCE_IDS)
def test_softmax_cross_entropy_torch_ops_backward_asks_for_what_requires_grad(kind, needs):
    x, target = _cross_entropy_leaves(kind, needs, (4, 5))
    with OpSpy() as spy:
        ops.softmax_cross_entropy_forward(x, target, None, "mean", -100, 0.0)[0].backward()
    assert spy.calls == [(SCE_BACKWARD, list(needs))]
    forward_graph, backward_graph = _compiled_graph_masks(softmax_cross_entropy, x, target)
    assert forward_graph == [] and backward_graph == [(SCE_BACKWARD, list(needs))]


# ---- LinearCrossEntropy: the forward op's grad_mask = (input, linear_weight, linear_bias), computed ahead for
# the scalar reductions; linear_cross_entropy_backward's output_mask = (input, linear_weight, linear_bias,
# target) where the backward recomputes (reduction 'none', a probability target's gradient, a second backward).

LCE_CASES = (
    [("index", True, (*needs, False)) for needs in subsets(3)]
    + [("index", False, (*needs, False, False)) for needs in subsets(2)]
    + [("probability", True, needs) for needs in subsets(4)]
)
LCE_IDS = [
    f"{kind}-{name}" + ("" if bias else ", no bias")
    for (kind, bias, _), name in zip(LCE_CASES, _ids([c[2] for c in LCE_CASES], ["x", "w", "b", "target"]))
]


def _linear_cross_entropy_leaves(kind, bias, needs):
    x, w = torch.randn(6, 3), torch.randn(5, 3)
    b = torch.randn(5) if bias else None
    target = torch.randint(0, 5, (6,)) if kind == "index" else torch.rand(6, 5)
    return [None if t is None else t.requires_grad_(need) for t, need in zip((x, w, b, target), needs)]


def _expected_lce_calls(kind, bias, needs, reduction, backwards):
    """The (op, mask) calls of a forward and `backwards` backward passes (retain_graph)."""
    x, w, b, t = needs
    backward_mask = [x, w, bias and b, kind == "probability" and t]
    ahead = reduction != "none" and not backward_mask[3]
    forward = (LCE_FORWARD, backward_mask[:3] if ahead else [False] * 3)
    # With the gradients computed ahead, the first backward only scales them; a second one recomputes.
    recomputing = backwards - 1 if ahead else backwards
    return [forward] + [(LCE_BACKWARD, backward_mask)] * recomputing


@pytest.mark.parametrize("kind,bias,needs", LCE_CASES, ids=LCE_IDS)
def test_linear_cross_entropy_eager_asks_for_what_requires_grad(monkeypatch, kind, bias, needs):
    calls = _spy_on_call_kernel(monkeypatch, lce_layer)
    for reduction in ("mean", "none"):
        calls.clear()
        x, w, b, target = _linear_cross_entropy_leaves(kind, bias, needs)
        loss = linear_cross_entropy(x, w, target, linear_bias=b, reduction=reduction).sum()
        loss.backward(retain_graph=True)
        loss.backward()
        assert calls == _expected_lce_calls(kind, bias, needs, reduction, backwards=2), reduction


@pytest.mark.parametrize("kind,bias,needs", LCE_CASES, ids=LCE_IDS)
def test_linear_cross_entropy_torch_ops_asks_for_what_requires_grad(kind, bias, needs):
    x, w, b, target = _linear_cross_entropy_leaves(kind, bias, needs)
    with OpSpy() as spy:
        loss = ops.linear_cross_entropy_forward(x, w, b, target, None, "none", -100, 0.0, 0.0, None, [False] * 3, 1 << 20)[0]
        loss.sum().backward()
    assert spy.calls == _expected_lce_calls(kind, bias, needs, "none", backwards=1)
    for reduction in ("mean", "none"):
        def fn(x, w, b, target):
            return linear_cross_entropy(x, w, target, linear_bias=b, reduction=reduction)

        forward_graph, backward_graph = _compiled_graph_masks(fn, *_linear_cross_entropy_leaves(kind, bias, needs))
        expected = _expected_lce_calls(kind, bias, needs, reduction, backwards=1)
        assert forward_graph == expected[:1] and backward_graph == expected[1:], reduction
