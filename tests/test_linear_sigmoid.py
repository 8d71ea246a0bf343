"""LinearSigmoid: gradcheck in float64, parity with torch.sigmoid(F.linear(...)), bad input."""
import itertools
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import torch_manualbp
from torch_manualbp import _C
from torch_manualbp.functional import linear_sigmoid

IN, OUT = 5, 4


def reference(input, weight, bias=None):
    """The native composition: sigmoid(input @ weight.T + bias), bias broadcast like any torch add."""
    z = F.linear(input, weight)
    return torch.sigmoid(z if bias is None else z + bias)


# (leading dims of input, bias shape or None): every broadcast case the layer promises.
SHAPES = [
    ((), None),
    ((), (OUT,)),
    ((3,), None),
    ((3,), (OUT,)),
    ((3,), (3, OUT)),  # per-sample bias
    ((3,), (1, 1)),
    ((3,), ()),  # a 0-dim bias
    ((2, 3), (OUT,)),
    ((2, 3), (3, OUT)),
    ((2, 3), (2, 1, OUT)),
    ((2, 3), (2, 3, 1)),
    ((2, 2, 3), (2, 1, OUT)),
]


def make(lead, bias_shape, dtype=torch.float64, requires_grad=(True, True, True)):
    x = torch.randn((*lead, IN), dtype=dtype, requires_grad=requires_grad[0])
    w = torch.randn(OUT, IN, dtype=dtype, requires_grad=requires_grad[1])
    b = None if bias_shape is None else torch.randn(bias_shape, dtype=dtype, requires_grad=requires_grad[2])
    return x, w, b


@pytest.mark.parametrize("lead,bias_shape", SHAPES)
def test_gradcheck_shapes(lead, bias_shape):
    args = make(lead, bias_shape)
    assert gradcheck(linear_sigmoid, args)
    assert gradgradcheck(linear_sigmoid, args)


@pytest.mark.parametrize("mask", [m for m in itertools.product([False, True], repeat=3) if any(m)])
def test_gradcheck_each_subset_requires_grad(mask):
    args = make((2, 3), (OUT,), requires_grad=mask)
    assert gradcheck(linear_sigmoid, args)


def test_gradcheck_noncontiguous_views():
    x = torch.randn(3, 7, 2 * IN, dtype=torch.float64)[:, ::2, ::2].requires_grad_()  # strided input
    w_base = torch.randn(IN, OUT, dtype=torch.float64, requires_grad=True)  # weight passed as a w.t() view
    b = torch.randn(2 * OUT, dtype=torch.float64)[::2].requires_grad_()
    assert not x.is_contiguous() and not w_base.t().is_contiguous() and not b.is_contiguous()
    assert gradcheck(lambda x, w, b: linear_sigmoid(x, w.t(), b), (x, w_base, b))


def test_gradient_reaches_transposed_weight_view():
    w_base = torch.randn(IN, OUT, requires_grad=True)
    w_ref = w_base.detach().clone().requires_grad_()
    x = torch.randn(6, IN)
    linear_sigmoid(x, w_base.t()).square().sum().backward()
    reference(x, w_ref.t()).square().sum().backward()
    torch.testing.assert_close(w_base.grad, w_ref.grad)


@pytest.mark.parametrize("lead,bias_shape", SHAPES)
def test_parity_float32(lead, bias_shape):
    ours = make(lead, bias_shape, dtype=torch.float32)
    theirs = [None if t is None else t.detach().clone().requires_grad_() for t in ours]
    y = linear_sigmoid(*ours)
    y_ref = reference(*theirs)
    torch.testing.assert_close(y, y_ref)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    for a, b in zip(ours, theirs):
        if a is not None:
            assert a.grad.shape == a.shape
            torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_reduced_precision_close_to_float32(dtype, tol):
    x, w, b = make((64,), (OUT,), dtype=torch.float32)
    low = [t.detach().to(dtype).requires_grad_() for t in (x, w, b)]
    y = linear_sigmoid(*low)
    assert y.dtype == dtype
    y_ref = reference(*[t.detach().float().requires_grad_() for t in low])
    torch.testing.assert_close(y.float(), y_ref, atol=tol, rtol=tol)
    y.float().sum().backward()
    ref_inputs = [t.detach().float().requires_grad_() for t in low]
    reference(*ref_inputs).sum().backward()
    for a, r in zip(low, ref_inputs):
        assert a.grad.dtype == dtype
        torch.testing.assert_close(a.grad.float(), r.grad, atol=tol * 8, rtol=tol * 4)


def test_zero_stride_upstream_gradient():
    """y.sum() hands backward an expanded (all strides 0) gradient: read in place, same result."""
    x, w, b = make((8,), (OUT,), dtype=torch.float32)
    theirs = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    linear_sigmoid(x, w, b).sum().backward()
    reference(*theirs).sum().backward()
    for a, r in zip((x, w, b), theirs):
        torch.testing.assert_close(a.grad, r.grad)


def test_empty_batch():
    x = torch.randn(0, IN, requires_grad=True)
    w = torch.randn(OUT, IN, requires_grad=True)
    b = torch.randn(OUT, requires_grad=True)
    y = linear_sigmoid(x, w, b)
    assert y.shape == (0, OUT)
    y.sum().backward()
    assert x.grad.shape == (0, IN)
    torch.testing.assert_close(w.grad, torch.zeros_like(w))
    torch.testing.assert_close(b.grad, torch.zeros_like(b))


def test_zero_in_features_gives_sigmoid_of_bias():
    b = torch.randn(OUT)
    torch.testing.assert_close(linear_sigmoid(torch.randn(3, 0), torch.randn(OUT, 0), b), torch.sigmoid(b).expand(3, OUT))


def test_inputs_not_mutated_and_saved_tensors():
    x, w, b = make((3,), (OUT,), dtype=torch.float32)
    copies = [t.detach().clone() for t in (x, w, b)]
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = linear_sigmoid(x, w, b)
    # x, W and the output y: nothing else is kept for backward.
    assert len(saved) == 3
    assert saved[0] is x and saved[1] is w and saved[2].data_ptr() == y.data_ptr()
    y.backward(torch.randn_like(y))
    for t, c in zip((x, w, b), copies):
        assert torch.equal(t.detach(), c)


def test_saturated_sigmoid():
    w = torch.eye(3, dtype=torch.float32)
    x = torch.tensor([[200.0, -200.0, 0.0]], requires_grad=True)
    y = linear_sigmoid(x, w)
    torch.testing.assert_close(y, torch.sigmoid(x.detach()))
    assert y[0, 0] == 1.0 and y[0, 1] >= 0.0 and torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_openmp_threads_are_used():
    assert _C.built_with_openmp()
    if torch.get_num_threads() > 1:
        assert _C.kernel_threads_used() == torch.get_num_threads()


def test_forced_default_simd_level_gives_same_numbers():
    """The scalar (DEFAULT) kernels, picked with ATEN_CPU_CAPABILITY=default, agree with the SIMD ones."""
    code = (
        "import torch, torch_manualbp, sys\n"
        "from torch_manualbp import _C\n"
        "torch.manual_seed(0)\n"
        "x = torch.randn(33, 70, requires_grad=True); w = torch.randn(19, 70, requires_grad=True)\n"
        "b = torch.randn(19, requires_grad=True)\n"
        "y = torch_manualbp.functional.linear_sigmoid(x, w, b); y.backward(torch.randn_like(y))\n"
        "torch.save([y.detach(), x.grad, w.grad, b.grad], sys.argv[1])\n"
        "print(_C.cpu_simd_level())\n"
    )
    results = {}
    for level in ("default", None):
        env = dict(os.environ)
        env.pop("ATEN_CPU_CAPABILITY", None)
        if level:
            env["ATEN_CPU_CAPABILITY"] = level
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"tm_simd_{level}_{os.getpid()}.pt")
        out = subprocess.run([sys.executable, "-c", code, path], env=env, capture_output=True, text=True, check=True)
        results[out.stdout.strip()] = torch.load(path)
        os.remove(path)
    assert "DEFAULT" in results
    assert len(results) == 2 or _C.cpu_simd_level() == "DEFAULT"
    (a, b) = results.values() if len(results) == 2 else (results["DEFAULT"], results["DEFAULT"])
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)


BAD_INPUTS = [
    # (description, args, exception type, message fragment)
    ("in_features mismatch", lambda: (torch.randn(2, 3), torch.randn(4, 5)), RuntimeError, "input.size(-1) to equal weight.size(1)"),
    ("weight rank", lambda: (torch.randn(2, 3), torch.randn(4, 3, 1)), RuntimeError, "weight of shape (out_features, in_features)"),
    ("0-dim input", lambda: (torch.randn(()), torch.randn(4, 1)), RuntimeError, "at least 1 dimension"),
    ("bias does not broadcast", lambda: (torch.randn(2, 3), torch.randn(4, 3), torch.randn(3)), RuntimeError, "bias of shape [3]"),
    ("bias broadcasts beyond output", lambda: (torch.randn(2, 3), torch.randn(4, 3), torch.randn(5, 2, 4)), RuntimeError, "broadcasts to the output shape [2, 4]"),
    ("weight dtype", lambda: (torch.randn(2, 3), torch.randn(4, 3, dtype=torch.float64)), RuntimeError, "weight to have the same dtype as input"),
    ("bias dtype", lambda: (torch.randn(2, 3), torch.randn(4, 3), torch.randn(4, dtype=torch.float64)), RuntimeError, "bias to have the same dtype as input"),
    ("integer input", lambda: (torch.ones(2, 3, dtype=torch.long), torch.ones(4, 3, dtype=torch.long)), TypeError, "floating-point tensor"),
    ("bool input", lambda: (torch.ones(2, 3, dtype=torch.bool), torch.ones(4, 3, dtype=torch.bool)), TypeError, "got input of dtype Bool"),
    ("non-tensor input", lambda: (3, torch.randn(4, 3)), TypeError, "argument 'input' must be Tensor, not int"),
    ("non-tensor weight", lambda: (torch.randn(2, 3), [[1.0]]), TypeError, "argument 'weight' must be Tensor, not list"),
    ("non-tensor bias", lambda: (torch.randn(2, 3), torch.randn(4, 3), 1.0), TypeError, "argument 'bias' must be Tensor or None, not float"),
]


@pytest.mark.parametrize("desc,make_args,exc,fragment", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input(desc, make_args, exc, fragment):
    with pytest.raises(exc) as info:
        linear_sigmoid(*make_args())
    assert fragment in str(info.value)


def test_bad_input_through_torch_ops_directly():
    """The checks live in C++: calling the op without the Python wrapper is just as safe."""
    with pytest.raises(RuntimeError, match="input.size"):
        torch.ops.torch_manualbp.linear_sigmoid_forward(torch.randn(2, 3), torch.randn(4, 5), None)
    with pytest.raises(RuntimeError, match="grad_output"):
        torch.ops.torch_manualbp.linear_sigmoid_backward(
            torch.randn(3, 4), torch.randn(2, 3), torch.randn(4, 3), torch.rand(2, 4), None, [True, True, False]
        )
    with pytest.raises(RuntimeError, match="output of shape"):
        torch.ops.torch_manualbp.linear_sigmoid_backward(
            torch.randn(2, 4), torch.randn(2, 3), torch.randn(4, 3), torch.rand(2, 5), None, [True, True, False]
        )


def test_public_names():
    assert torch_manualbp.LinearSigmoidFunction.apply is not None
    assert issubclass(torch_manualbp.LinearSigmoidFunction, torch.autograd.Function)


def test_eager_path_calls_the_ops_below_autograd_and_matches_them(monkeypatch):
    """In eager mode LinearSigmoidFunction runs its forward and backward ops through
    torch_manualbp._C.*_below_autograd (no Python autograd wrapper): the same values, bitwise, as the ops
    called through torch.ops, and a call of each per forward + backward."""
    from torch_manualbp import _C
    from torch_manualbp.layers import linear_sigmoid as layer

    calls = []
    for name in ("linear_sigmoid_forward_below_autograd", "linear_sigmoid_backward_below_autograd"):
        real = getattr(_C, name)
        monkeypatch.setattr(layer._C, name, lambda *args, _real=real, _name=name: calls.append(_name) or _real(*args))
    x, w, b = (torch.randn(*shape).requires_grad_() for shape in ((7, 5), (3, 5), (3,)))
    y = linear_sigmoid(x, w, b)
    grad_y = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, w, b), grad_y)
    assert calls == ["linear_sigmoid_forward_below_autograd", "linear_sigmoid_backward_below_autograd"]
    ops = torch.ops.torch_manualbp
    with torch.no_grad():
        expected_y = ops.linear_sigmoid_forward(x, w, b)
        expected = ops.linear_sigmoid_backward(grad_y, x, w, expected_y, [3], [True, True, True])
    assert torch.equal(y, expected_y)
    for got, want in zip(grads, expected):
        assert torch.equal(got, want)
