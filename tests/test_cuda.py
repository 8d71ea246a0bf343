"""The CUDA kernels of both layers against native torch on the GPU: parity (values and every gradient),
gradcheck in float64, the modules, bad input, float16/bfloat16, determinism, no host synchronisation.

Skipped when no GPU is present (the build-side check, that the CUDA kernels were compiled in, is
tests/test_build_config.py and runs everywhere).
"""
import itertools
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torch_manualbp
from torch_manualbp import functional as MF

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")

CUDA = "cuda"
LOW_PRECISION = [torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _exact_float32_matmul():
    """Native references and our GEMMs both in true float32 (no TF32), whatever the session set."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved


def assert_within_native_error(ours, native, exact, factor=2.0, floor=None):
    """A low-precision result is as close to the float64 `exact` value as `factor` times the native
    low-precision result is (plus one unit of the dtype's resolution, for values native gets exactly)."""
    floor = torch.finfo(ours.dtype).eps if floor is None else floor
    ours_error = (ours.double() - exact).abs()
    native_error = (native.double() - exact).abs().max().item()
    scale = exact.abs().clamp(min=1.0)
    assert (ours_error <= factor * native_error + floor * scale).all(), (
        f"max error {ours_error.max().item():.3g} vs native {native_error:.3g}"
    )


# ---- LinearSigmoid -------------------------------------------------------------------------------------
def linear_sigmoid_reference(x, w, b):
    return torch.sigmoid(F.linear(x, w) + (b if b is not None else 0))


# (input shape, out_features, bias shape or None)
LINEAR_CASES = [
    ((8, 5), 3, (3,)),
    ((8, 5), 3, None),
    ((5,), 4, (4,)),
    ((2, 3, 6), 7, (7,)),
    ((8, 5), 3, (8, 3)),  # per-sample bias
    ((8, 5), 3, (1, 1)),
    ((2, 3, 6), 4, (3, 1)),
    ((0, 5), 3, (3,)),  # empty batch
    ((300, 17), 200, (200,)),  # several column blocks, several row blocks
]


def _make_linear(shape, out_features, bias_shape, dtype, requires_grad=True):
    x = torch.randn(shape, device=CUDA, dtype=dtype, requires_grad=requires_grad)
    w = torch.randn(out_features, shape[-1], device=CUDA, dtype=dtype, requires_grad=requires_grad)
    b = None
    if bias_shape is not None:
        b = torch.randn(bias_shape, device=CUDA, dtype=dtype, requires_grad=requires_grad)
    return x, w, b


@pytest.mark.parametrize("shape,out_features,bias_shape", LINEAR_CASES)
def test_linear_sigmoid_matches_torch(shape, out_features, bias_shape):
    x, w, b = _make_linear(shape, out_features, bias_shape, torch.float32)
    y = MF.linear_sigmoid(x, w, b)
    ref = linear_sigmoid_reference(x, w, b)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(ref)
    inputs = [t for t in (x, w, b) if t is not None]
    ours = torch.autograd.grad(y, inputs, grad)
    theirs = torch.autograd.grad(ref, inputs, grad)
    for a, e in zip(ours, theirs):
        assert a.shape == e.shape
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_linear_sigmoid_views_and_broadcast_grad():
    """Transposed input and a w.t() view as weight, and the zero-stride gradient of y.sum()."""
    x = torch.randn(6, 9, device=CUDA).t().requires_grad_()  # (9, 6), non-contiguous
    w_base = torch.randn(6, 4, device=CUDA, requires_grad=True)
    b = torch.randn(4, device=CUDA, requires_grad=True)
    y = MF.linear_sigmoid(x, w_base.t(), b)
    ref = linear_sigmoid_reference(x, w_base.t(), b)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    ours = torch.autograd.grad(y.sum(), (x, w_base, b))
    theirs = torch.autograd.grad(ref.sum(), (x, w_base, b))
    for a, e in zip(ours, theirs):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,out_features,bias_shape", [c for c in LINEAR_CASES if c[0][0] != 300])
def test_linear_sigmoid_gradcheck(shape, out_features, bias_shape):
    x, w, b = _make_linear(shape, out_features, bias_shape, torch.float64)
    inputs = tuple(t for t in (x, w, b) if t is not None)
    fn = (lambda x, w, b: MF.linear_sigmoid(x, w, b)) if b is not None else (lambda x, w: MF.linear_sigmoid(x, w))
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("needs", list(itertools.product([False, True], repeat=3))[1:])
def test_linear_sigmoid_gradcheck_subsets(needs):
    x, w, b = _make_linear((4, 3), 2, (2,), torch.float64, requires_grad=False)
    for t, need in zip((x, w, b), needs):
        t.requires_grad_(need)
    assert torch.autograd.gradcheck(MF.linear_sigmoid, (x, w, b))


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("bias_shape", [(64,), (128, 64), None])
def test_linear_sigmoid_low_precision(dtype, bias_shape):
    x, w, b = _make_linear((128, 96), 64, bias_shape, dtype)
    grad = torch.randn(128, 64, device=CUDA, dtype=dtype)
    exact_inputs = [t.detach().double().requires_grad_() for t in (x, w, b) if t is not None]
    exact = linear_sigmoid_reference(*exact_inputs, *([None] if b is None else []))
    exact_grads = torch.autograd.grad(exact, exact_inputs, grad.double())
    inputs = [t for t in (x, w, b) if t is not None]
    y = MF.linear_sigmoid(x, w, b)
    native = linear_sigmoid_reference(x, w, b)
    assert y.dtype == dtype
    assert_within_native_error(y, native, exact.detach())
    for ours, theirs, e in zip(
        torch.autograd.grad(y, inputs, grad), torch.autograd.grad(native, inputs, grad), exact_grads
    ):
        assert ours.dtype == dtype
        assert_within_native_error(ours, theirs, e)


def test_linear_sigmoid_module_matches_nn_linear():
    ours = torch_manualbp.LinearSigmoid(20, 10).to(CUDA)
    linear = nn.Linear(20, 10).to(CUDA)
    linear.load_state_dict(ours.state_dict())
    x = torch.randn(32, 20, device=CUDA)
    target = torch.rand(32, 10, device=CUDA)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.5)
    opt_ref = torch.optim.SGD(linear.parameters(), lr=0.5)
    for _ in range(3):
        opt_ours.zero_grad()
        F.mse_loss(ours(x), target).backward()
        opt_ours.step()
        opt_ref.zero_grad()
        F.mse_loss(torch.sigmoid(linear(x)), target).backward()
        opt_ref.step()
    for p, q in zip(ours.parameters(), linear.parameters()):
        assert p.is_cuda
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_linear_sigmoid_deterministic_and_inputs_untouched():
    x, w, b = _make_linear((1000, 64), 48, (48,), torch.float32)
    grad = torch.randn(1000, 48, device=CUDA)
    copies = [t.detach().clone() for t in (x, w, b, grad)]
    first = torch.autograd.grad(MF.linear_sigmoid(x, w, b), (x, w, b), grad)
    second = torch.autograd.grad(MF.linear_sigmoid(x, w, b), (x, w, b), grad)
    for a, c in zip(first, second):
        assert torch.equal(a, c)
    for t, c in zip((x, w, b, grad), copies):
        assert torch.equal(t, c)


def test_linear_sigmoid_ops_do_not_synchronize():
    x, w, b = _make_linear((64, 32), 16, (16,), torch.float32, requires_grad=False)
    ops = torch.ops.torch_manualbp
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = ops.linear_sigmoid_forward(x, w, b)
        ops.linear_sigmoid_backward(torch.ones_like(y), x, w, y, [16], [True, True, True])
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize(
    "make,exc,fragment",
    [
        (lambda: (torch.randn(4, 3, device=CUDA), torch.randn(2, 3), None), RuntimeError, "same device"),
        (lambda: (torch.randn(4, 3, device=CUDA), torch.randn(2, 3, device=CUDA), torch.randn(2)), RuntimeError, "same device"),
        (lambda: (torch.randn(4, 3, device=CUDA), torch.randn(2, 3, device=CUDA).double(), None), RuntimeError, "same dtype"),
        (lambda: (torch.randn(4, 3, device=CUDA), torch.randn(2, 4, device=CUDA), None), RuntimeError, "in_features"),
        (lambda: (torch.randn(4, 3, device=CUDA), torch.randn(2, 3, device=CUDA), torch.randn(3, device=CUDA)), RuntimeError, "bias"),
        (lambda: (torch.ones(4, 3, device=CUDA, dtype=torch.int64), torch.ones(2, 3, device=CUDA, dtype=torch.int64), None), TypeError, "floating-point"),
    ],
)
def test_linear_sigmoid_bad_input(make, exc, fragment):
    x, w, b = make()
    with pytest.raises(exc, match=fragment):
        MF.linear_sigmoid(x, w, b)


# ---- SoftmaxCrossEntropy -------------------------------------------------------------------------------
# (input shape, class count in it) covering each kernel layout: one warp per row (C <= 1024), one block per
# row (larger C), one thread per position (N-d input), and the unbatched (C,) input.
CE_SHAPES = [(7,), (6, 5), (3, 4, 5, 2), (4, 1500), (5, 37)]


def _ce_inputs(shape, kind, dtype, weighted, ignore_some):
    class_dim = 0 if len(shape) == 1 else 1
    classes = shape[class_dim]
    x = (3 * torch.randn(shape, device=CUDA, dtype=torch.float64)).to(dtype).requires_grad_()
    position_shape = shape[:class_dim] + shape[class_dim + 1:]
    if kind == "probability":
        target = torch.rand(shape, device=CUDA, dtype=dtype).requires_grad_()
        ignore_index = -100
    else:
        target = torch.randint(0, classes, position_shape, device=CUDA)
        ignore_index = 1 if ignore_some and position_shape else -100  # never ignore the only position
        if kind == "uint8":
            target = target.to(torch.uint8)
    weight = torch.rand(classes, device=CUDA, dtype=dtype) + 0.5 if weighted else None
    return x, target, weight, ignore_index


CE_GRID = list(
    itertools.product(CE_SHAPES, ["index", "uint8", "probability"], ["none", "mean", "sum"], [0.0, 0.2], [False, True])
)


@pytest.mark.parametrize("shape,kind,reduction,smoothing,weighted", CE_GRID)
def test_softmax_cross_entropy_matches_torch(shape, kind, reduction, smoothing, weighted):
    x, target, weight, ignore_index = _ce_inputs(shape, kind, torch.float32, weighted, ignore_some=True)
    kwargs = dict(weight=weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing)
    loss = MF.softmax_cross_entropy(x, target, **kwargs)
    # torch's own label-smoothing path gathers the weights with the target, which needs int64 indices.
    ref = F.cross_entropy(x, target.long() if kind == "uint8" else target, **kwargs)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(ref)
    inputs = (x, target) if kind == "probability" else (x,)
    for ours, theirs in zip(torch.autograd.grad(loss, inputs, grad), torch.autograd.grad(ref, inputs, grad)):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "shape,kind,reduction,smoothing,weighted",
    [c for c in CE_GRID if c[0] != (4, 1500) and c[1] != "uint8"],
)
def test_softmax_cross_entropy_gradcheck(shape, kind, reduction, smoothing, weighted):
    x, target, weight, ignore_index = _ce_inputs(shape, kind, torch.float64, weighted, ignore_some=True)
    kwargs = dict(weight=weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing)
    if kind == "probability":
        assert torch.autograd.gradcheck(lambda x, t: MF.softmax_cross_entropy(x, t, **kwargs), (x, target))
    else:
        assert torch.autograd.gradcheck(lambda x: MF.softmax_cross_entropy(x, target, **kwargs), (x,))


def test_softmax_cross_entropy_non_contiguous_and_broadcast_grad():
    x = torch.randn(5, 8, 6, device=CUDA).permute(0, 2, 1).requires_grad_()  # (5, 6, 8), class dim strided
    target = torch.randint(0, 6, (5, 8), device=CUDA)
    loss = MF.softmax_cross_entropy(x, target, reduction="none")
    ref = F.cross_entropy(x, target, reduction="none")
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    (ours,) = torch.autograd.grad(loss.sum(), x)  # a zero-stride grad_loss
    (theirs,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_softmax_cross_entropy_all_ignored_and_empty(reduction):
    x = torch.randn(4, 3, device=CUDA, requires_grad=True)
    target = torch.full((4,), -100, device=CUDA)
    torch.testing.assert_close(
        MF.softmax_cross_entropy(x, target, reduction=reduction),
        F.cross_entropy(x, target, reduction=reduction),
        equal_nan=True,
    )
    empty = torch.randn(0, 3, device=CUDA)
    torch.testing.assert_close(
        MF.softmax_cross_entropy(empty, target[:0], reduction=reduction),
        F.cross_entropy(empty, target[:0], reduction=reduction),
        equal_nan=True,
    )


def test_softmax_cross_entropy_extreme_and_masked_logits():
    x = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [0.0, -float("inf"), 2.0]], device=CUDA, requires_grad=True)
    target = torch.tensor([1, 2, 0], device=CUDA)
    for smoothing in (0.0, 0.1):
        loss = MF.softmax_cross_entropy(x, target, reduction="none", label_smoothing=smoothing)
        ref = F.cross_entropy(x, target, reduction="none", label_smoothing=smoothing)
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
        (ours,) = torch.autograd.grad(loss.sum(), x)
        (theirs,) = torch.autograd.grad(ref.sum(), x)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    nan_row = torch.tensor([[0.0, float("nan"), 1.0]], device=CUDA)
    assert MF.softmax_cross_entropy(nan_row, torch.tensor([0], device=CUDA)).isnan().all()


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("shape", [(64, 100), (8, 3000), (4, 10, 6, 5)])
@pytest.mark.parametrize("kind", ["index", "probability"])
def test_softmax_cross_entropy_low_precision(dtype, shape, kind):
    x, target, weight, ignore_index = _ce_inputs(shape, kind, dtype, weighted=True, ignore_some=False)
    kwargs = dict(weight=weight, reduction="none", label_smoothing=0.1)
    exact_x = x.detach().double().requires_grad_()
    exact_t = target.detach().double().requires_grad_() if kind == "probability" else target
    exact_w = weight.double()
    exact = F.cross_entropy(exact_x, exact_t, **{**kwargs, "weight": exact_w})
    loss = MF.softmax_cross_entropy(x, target, **kwargs)
    native = F.cross_entropy(x, target, **kwargs)
    assert loss.dtype == dtype
    assert_within_native_error(loss, native, exact.detach())
    grad = torch.rand_like(exact).to(dtype)
    inputs, exact_inputs = ((x, target), (exact_x, exact_t)) if kind == "probability" else ((x,), (exact_x,))
    exact_grads = torch.autograd.grad(exact, exact_inputs, grad.double())
    for ours, theirs, e in zip(
        torch.autograd.grad(loss, inputs, grad), torch.autograd.grad(native, inputs, grad), exact_grads
    ):
        assert_within_native_error(ours, theirs, e)


def test_softmax_cross_entropy_module_matches_nn():
    weight = torch.rand(5) + 0.5
    ours = torch_manualbp.SoftmaxCrossEntropyLoss(weight=weight, ignore_index=2, label_smoothing=0.1).to(CUDA)
    ref = nn.CrossEntropyLoss(weight=weight, ignore_index=2, label_smoothing=0.1).to(CUDA)
    assert ours.weight.is_cuda
    x = torch.randn(16, 5, 3, device=CUDA, requires_grad=True)
    target = torch.randint(0, 5, (16, 3), device=CUDA)
    loss, expected = ours(x, target), ref(x, target)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(loss, x)[0], torch.autograd.grad(expected, x)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(3000, 50), (6, 5000), (64, 7, 33)])
def test_softmax_cross_entropy_deterministic_and_inputs_untouched(shape):
    x, target, weight, _ = _ce_inputs(shape, "index", torch.float32, weighted=True, ignore_some=False)
    copies = [x.detach().clone(), target.clone()]
    runs = []
    for _ in range(2):
        loss = MF.softmax_cross_entropy(x, target, weight=weight, label_smoothing=0.1)
        runs.append((loss.detach(), torch.autograd.grad(loss, x)[0]))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert torch.equal(x, copies[0]) and torch.equal(target, copies[1])


@pytest.mark.parametrize("kind", ["index", "probability"])
def test_softmax_cross_entropy_ops_do_not_synchronize(kind):
    x, target, weight, _ = _ce_inputs((32, 10), kind, torch.float32, weighted=True, ignore_some=False)
    x, target = x.detach(), target.detach()
    ops = torch.ops.torch_manualbp
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, lse, norm = ops.softmax_cross_entropy_forward(x, target, weight, "mean", -100, 0.1)
        ops.softmax_cross_entropy_backward(
            torch.ones_like(loss), x, target, weight, lse, norm, "mean", -100, 0.1, [True, True]
        )
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize(
    "make,exc,fragment",
    [
        (lambda: (torch.randn(4, 3, device=CUDA), torch.zeros(4, device=CUDA, dtype=torch.int32), None), RuntimeError, "int64 or uint8"),
        (lambda: (torch.randn(4, 3, device=CUDA), torch.zeros(5, device=CUDA, dtype=torch.int64), None), ValueError, "batch_size"),
        (lambda: (torch.randn(4, 3, device=CUDA), torch.zeros(4, dtype=torch.int64), None), RuntimeError, "same device"),
        (lambda: (torch.randn(4, 3, device=CUDA), torch.zeros(4, device=CUDA, dtype=torch.int64), torch.rand(4, device=CUDA)), RuntimeError, "weight"),
        (lambda: (torch.ones(4, 3, device=CUDA, dtype=torch.int64), torch.zeros(4, device=CUDA, dtype=torch.int64), None), TypeError, "floating-point"),
    ],
)
def test_softmax_cross_entropy_bad_input(make, exc, fragment):
    x, target, weight = make()
    with pytest.raises(exc, match=fragment):
        MF.softmax_cross_entropy(x, target, weight=weight)


def test_softmax_cross_entropy_out_of_range_target_is_a_device_assert():
    """An out-of-range class index stops the kernel (a device-side assert, as torch's own CUDA loss does)
    instead of reading out of bounds. Run in a child process: the assert leaves its CUDA context unusable."""
    script = textwrap.dedent(
        """
        import torch, torch_manualbp
        x = torch.randn(4, 3, device="cuda")
        loss = torch_manualbp.functional.softmax_cross_entropy(x, torch.tensor([0, 1, 7, 2], device="cuda"))
        torch.cuda.synchronize()
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "device-side assert" in output or "Target 7 is out of bounds" in output, output[-2000:]
