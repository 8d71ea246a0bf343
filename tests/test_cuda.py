"""Both layers on every device against native torch on the same device: parity (values and every gradient),
gradcheck in float64, the modules, bad input, float16/bfloat16, determinism, no host synchronisation,
out-of-range class indices, non-finite rows, and the shapes that reach each thread layout of the CUDA
kernels (csrc/cuda/*.cu).

Every test takes a `device`: "cpu" always runs, "cuda" is skipped without a GPU. The CPU run makes the same
calls (argument lists, the ops' outputs unpacked, shapes, the comparisons), so this file cannot fall behind
the ops while no GPU runs it; only the CUDA run checks the CUDA kernels. Direct op calls take their arguments
from tests/op_args.py, the builders tests/test_opcheck.py also uses (it runs opcheck of every op on CUDA
sample inputs too). More tests run on CUDA in tests/test_extreme.py (saturation, NaN and infinities, huge
tensors past 2**31 elements) and tests/test_autocast.py.

Shapes per CUDA layout: LinearSigmoid covers its (rows, cols) output with 256-thread blocks, at most 2048 of
them per column block (the bias gradient then adds up to 2048 partials per column). Cross-entropy rows of up
to 1024 classes share a warp (1 to 32 lanes per row: (6, 5), (5, 37)), longer rows get a block each (up to
1024 threads past 8192 classes: (4, 1500), (3, 10000)); N-d inputs split each position's classes over up to
128 threads ((3, 4, 5, 2): one thread per position; (2, 64, 3): 4; (2, 4096, 3): 128, 1024-thread blocks).
"""
import contextlib
import itertools
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torch_manualbp
from op_args import (
    DEVICES,
    linear_cross_entropy_backward_args,
    linear_cross_entropy_forward_args,
    linear_sigmoid_backward_args,
    needs_gpu,
    ops,
    softmax_cross_entropy_backward_args,
    softmax_cross_entropy_forward_args,
)
from test_softmax_cross_entropy_options import reference as options_reference
from torch_manualbp import functional as MF

LOW_PRECISION = [torch.float16, torch.bfloat16]
INF, NAN = float("inf"), float("nan")


@pytest.fixture(autouse=True)
def _exact_float32_matmul():
    """Native references and our GEMMs both in true float32 (no TF32), whatever the session set."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved


@contextlib.contextmanager
def no_host_sync(device):
    """On CUDA: any host synchronisation inside raises. On the CPU there is nothing to synchronise with."""
    if device != "cuda":
        yield
        return
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


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
    ((8, 5), 3, (1, 3)),  # a bias (1, out): the fused bias gradient, in the bias's own shape
    ((8, 5), 3, (1, 1)),
    ((2, 3, 6), 4, (3, 1)),  # leading dims that do not collapse: row offsets from a division per row
    ((0, 5), 3, (3,)),  # empty batch
    ((300, 17), 200, (200,)),  # several column blocks, several row blocks
]


def _make_linear(shape, out_features, bias_shape, dtype, device, requires_grad=True):
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=requires_grad)
    w = torch.randn(out_features, shape[-1], device=device, dtype=dtype, requires_grad=requires_grad)
    b = None
    if bias_shape is not None:
        b = torch.randn(bias_shape, device=device, dtype=dtype, requires_grad=requires_grad)
    return x, w, b


def _assert_linear_sigmoid_matches(x, w, b, grad, **tolerance):
    """Output and the gradient of every input against native ops, for the upstream gradient `grad`."""
    y = MF.linear_sigmoid(x, w, b)
    ref = linear_sigmoid_reference(x, w, b)
    torch.testing.assert_close(y, ref, **tolerance)
    inputs = [t for t in (x, w, b) if t is not None]
    for ours, theirs in zip(torch.autograd.grad(y, inputs, grad), torch.autograd.grad(ref, inputs, grad)):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, **tolerance)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,out_features,bias_shape", LINEAR_CASES)
def test_linear_sigmoid_matches_torch(shape, out_features, bias_shape, device):
    x, w, b = _make_linear(shape, out_features, bias_shape, torch.float32, device)
    grad = torch.randn(*shape[:-1], out_features, device=device)
    _assert_linear_sigmoid_matches(x, w, b, grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_linear_sigmoid_views_and_broadcast_grad(device):
    """Transposed input and a w.t() view as weight, and the zero-stride gradient of y.sum()."""
    x = torch.randn(6, 9, device=device).t().requires_grad_()  # (9, 6), non-contiguous
    w_base = torch.randn(6, 4, device=device, requires_grad=True)
    b = torch.randn(4, device=device, requires_grad=True)
    y = MF.linear_sigmoid(x, w_base.t(), b)
    ref = linear_sigmoid_reference(x, w_base.t(), b)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    ours = torch.autograd.grad(y.sum(), (x, w_base, b))
    theirs = torch.autograd.grad(ref.sum(), (x, w_base, b))
    for a, e in zip(ours, theirs):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["column stride 2", "transposed", "expanded along columns", "expanded along rows"])
def test_linear_sigmoid_strided_upstream_gradient(layout, device):
    """Upstream gradients whose columns are not contiguous: every way the backward reads dy."""
    x, w, b = _make_linear((40, 6), 24, (24,), torch.float64, device)
    grad = {
        "column stride 2": lambda: torch.randn(40, 48, device=device, dtype=torch.float64)[:, ::2],
        "transposed": lambda: torch.randn(24, 40, device=device, dtype=torch.float64).t(),
        "expanded along columns": lambda: torch.randn(40, 1, device=device, dtype=torch.float64).expand(40, 24),
        "expanded along rows": lambda: torch.randn(24, device=device, dtype=torch.float64).expand(40, 24),
    }[layout]()
    assert not grad.is_contiguous()
    _assert_linear_sigmoid_matches(x, w, b, grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("out_features", [128, 200])
def test_linear_sigmoid_bias_gradient_at_the_block_cap(out_features, device):
    """20000 rows: on CUDA 2048 row blocks of one column block (128 columns) or 1024 of each of two (200),
    the cap of the grid, so the bias gradient adds that many block partials per column."""
    x, w, b = _make_linear((20000, 3), out_features, (out_features,), torch.float64, device)
    grad = torch.randn(20000, out_features, device=device, dtype=torch.float64)
    _assert_linear_sigmoid_matches(x, w, b, grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,out_features,bias_shape", [c for c in LINEAR_CASES if c[0][0] != 300])
def test_linear_sigmoid_gradcheck(shape, out_features, bias_shape, device):
    x, w, b = _make_linear(shape, out_features, bias_shape, torch.float64, device)
    inputs = tuple(t for t in (x, w, b) if t is not None)
    fn = (lambda x, w, b: MF.linear_sigmoid(x, w, b)) if b is not None else (lambda x, w: MF.linear_sigmoid(x, w))
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("needs", list(itertools.product([False, True], repeat=3))[1:])
def test_linear_sigmoid_gradcheck_subsets(needs, device):
    x, w, b = _make_linear((4, 3), 2, (2,), torch.float64, device, requires_grad=False)
    for t, need in zip((x, w, b), needs):
        t.requires_grad_(need)
    assert torch.autograd.gradcheck(MF.linear_sigmoid, (x, w, b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("bias_shape", [(64,), (128, 64), None])
def test_linear_sigmoid_low_precision(dtype, bias_shape, device):
    x, w, b = _make_linear((128, 96), 64, bias_shape, dtype, device)
    grad = torch.randn(128, 64, device=device, dtype=dtype)
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


@pytest.mark.parametrize("device", DEVICES)
def test_linear_sigmoid_module_matches_nn_linear(device):
    ours = torch_manualbp.LinearSigmoid(20, 10).to(device)
    linear = nn.Linear(20, 10).to(device)
    linear.load_state_dict(ours.state_dict())
    x = torch.randn(32, 20, device=device)
    target = torch.rand(32, 10, device=device)
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
        assert p.device.type == device
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_linear_sigmoid_deterministic_and_inputs_untouched(device):
    x, w, b = _make_linear((1000, 64), 48, (48,), torch.float32, device)
    grad = torch.randn(1000, 48, device=device)
    copies = [t.detach().clone() for t in (x, w, b, grad)]
    first = torch.autograd.grad(MF.linear_sigmoid(x, w, b), (x, w, b), grad)
    second = torch.autograd.grad(MF.linear_sigmoid(x, w, b), (x, w, b), grad)
    for a, c in zip(first, second):
        assert torch.equal(a, c)
    for t, c in zip((x, w, b, grad), copies):
        assert torch.equal(t, c)


@pytest.mark.parametrize("device", DEVICES)
def test_linear_sigmoid_ops_do_not_synchronize(device):
    args = linear_sigmoid_backward_args(((64, 32), 16, (16,)), torch.float32, False, True, [True, True, True], device)
    grad_output, input, weight, _, bias_sizes, output_mask = args
    bias = torch.randn(bias_sizes, device=device)
    with no_host_sync(device):
        output = ops.linear_sigmoid_forward(input, weight, bias)
        grads = ops.linear_sigmoid_backward(grad_output, input, weight, output, bias_sizes, output_mask)
    assert [g.shape for g in grads] == [input.shape, weight.shape, bias.shape]


# (inputs on `device`, exception, message fragment)
LINEAR_BAD_INPUT = [
    (lambda d: (torch.randn(4, 3, device=d), torch.randn(2, 3, device=d).double(), None), RuntimeError, "same dtype"),
    (lambda d: (torch.randn(4, 3, device=d), torch.randn(2, 4, device=d), None), RuntimeError, "in_features"),
    (lambda d: (torch.randn(4, 3, device=d), torch.randn(2, 3, device=d), torch.randn(3, device=d)), RuntimeError, "bias"),
    (lambda d: (torch.ones(4, 3, device=d, dtype=torch.int64), torch.ones(2, 3, device=d, dtype=torch.int64), None), TypeError, "floating-point"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("make,exc,fragment", LINEAR_BAD_INPUT)
def test_linear_sigmoid_bad_input(make, exc, fragment, device):
    x, w, b = make(device)
    with pytest.raises(exc, match=fragment):
        MF.linear_sigmoid(x, w, b)


@needs_gpu
@pytest.mark.parametrize("weight_device,bias_device", [("cpu", None), ("cuda", "cpu")])
def test_linear_sigmoid_inputs_on_two_devices(weight_device, bias_device):
    x = torch.randn(4, 3, device="cuda")
    w = torch.randn(2, 3, device=weight_device)
    b = None if bias_device is None else torch.randn(2, device=bias_device)
    with pytest.raises(RuntimeError, match="same device"):
        MF.linear_sigmoid(x, w, b)


# ---- SoftmaxCrossEntropy -------------------------------------------------------------------------------
# (input shape) covering each CUDA layout (see the module docstring) and the unbatched (C,) input.
CE_SHAPES = [(7,), (6, 5), (5, 37), (4, 1500), (3, 4, 5, 2), (2, 64, 3)]


def _ce_inputs(shape, kind, dtype, weighted, ignore_some, device):
    class_dim = 0 if len(shape) == 1 else 1
    classes = shape[class_dim]
    x = (3 * torch.randn(shape, device=device, dtype=torch.float64)).to(dtype).requires_grad_()
    position_shape = shape[:class_dim] + shape[class_dim + 1:]
    if kind == "probability":
        target = torch.rand(shape, device=device, dtype=dtype).requires_grad_()
        ignore_index = -100
    else:
        target = torch.randint(0, classes, position_shape, device=device)
        ignore_index = 1 if ignore_some and position_shape else -100  # never ignore the only position
        if kind == "uint8":
            target = target.to(torch.uint8)
    weight = torch.rand(classes, device=device, dtype=dtype) + 0.5 if weighted else None
    return x, target, weight, ignore_index


def _assert_cross_entropy_matches(x, target, grad=None, tolerance=None, **kwargs):
    """Loss and the gradients of the input (and of a probability target) against F.cross_entropy, NaN
    where it has NaN."""
    tolerance = tolerance or dict(rtol=1e-5, atol=1e-6)
    loss = MF.softmax_cross_entropy(x, target, **kwargs)
    # torch's own label-smoothing path gathers the weights with the target, which needs int64 indices.
    ref = F.cross_entropy(x, target.long() if target.dtype == torch.uint8 else target, **kwargs)
    torch.testing.assert_close(loss, ref, equal_nan=True, **tolerance)
    grad = torch.randn_like(ref) if grad is None else grad
    inputs = (x, target) if target.is_floating_point() else (x,)
    for ours, theirs in zip(torch.autograd.grad(loss, inputs, grad), torch.autograd.grad(ref, inputs, grad)):
        assert torch.equal(ours.isnan(), theirs.isnan())
        torch.testing.assert_close(ours, theirs, equal_nan=True, **tolerance)


CE_GRID = list(
    itertools.product(CE_SHAPES, ["index", "uint8", "probability"], ["none", "mean", "sum"], [0.0, 0.2], [False, True])
)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,kind,reduction,smoothing,weighted", CE_GRID)
def test_softmax_cross_entropy_matches_torch(shape, kind, reduction, smoothing, weighted, device):
    x, target, weight, ignore_index = _ce_inputs(shape, kind, torch.float32, weighted, True, device)
    _assert_cross_entropy_matches(
        x, target, weight=weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "shape,kind,reduction,smoothing,weighted",
    [c for c in CE_GRID if c[0] not in ((4, 1500), (2, 64, 3)) and c[1] != "uint8"],
)
def test_softmax_cross_entropy_gradcheck(shape, kind, reduction, smoothing, weighted, device):
    x, target, weight, ignore_index = _ce_inputs(shape, kind, torch.float64, weighted, True, device)
    kwargs = dict(weight=weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing)
    if kind == "probability":
        assert torch.autograd.gradcheck(lambda x, t: MF.softmax_cross_entropy(x, t, **kwargs), (x, target))
    else:
        assert torch.autograd.gradcheck(lambda x: MF.softmax_cross_entropy(x, target, **kwargs), (x,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["index", "probability"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("shape", [(3, 10000), (2, 4096, 3)], ids=["a block per row", "128 threads per position"])
def test_softmax_cross_entropy_widest_blocks_float64(shape, reduction, kind, device):
    """The 1024-thread blocks in float64, the kernels nearest the register limit, with every linear term
    (probability targets, weights, label smoothing), against native float64."""
    x, target, weight, _ = _ce_inputs(shape, kind, torch.float64, True, False, device)
    _assert_cross_entropy_matches(
        x, target, tolerance=dict(rtol=1e-10, atol=1e-12), weight=weight, reduction=reduction, label_smoothing=0.1
    )


def _rows_with_non_finite_logits(classes):
    """Six positions of `classes` logits: masked classes (-inf), a NaN, a +inf, all -inf, +inf with -inf,
    and plain; the special values at classes held by different threads of a position."""
    x = torch.randn(6, classes, dtype=torch.float64) * 3
    x[0, 1::3] = -INF
    x[1, classes // 2] = NAN
    x[2, classes - 1] = INF
    x[3] = -INF
    x[4, classes // 3], x[4, 0] = INF, -INF
    return x


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "sum"])
@pytest.mark.parametrize("kind", ["index", "probability"])
@pytest.mark.parametrize("layout", ["rows sharing a warp", "a block per row", "spatial"])
def test_softmax_cross_entropy_non_finite_rows_in_every_layout(layout, kind, reduction, device):
    """NaN loss and gradient for rows holding NaN or +inf or only -inf, -inf logits of probability targets,
    exactly where torch has them, with the special values at classes of different threads of a position."""
    classes = 3000 if layout == "a block per row" else 64
    x = _rows_with_non_finite_logits(classes).float()
    index = torch.tensor([0, 2, -100, 3, 5, 7])
    probabilities = torch.rand(6, classes, dtype=torch.float64).softmax(1).float()
    probabilities[0, 1::6] = 0  # zero mass on some masked classes: 0 * -inf, NaN in torch's loss
    target = index if kind == "index" else probabilities
    if layout == "spatial":  # the same positions as (N, C, S)
        x = x.t().unsqueeze(0).contiguous()
        target = index[None] if kind == "index" else probabilities.t().unsqueeze(0).contiguous()
    x = x.to(device).requires_grad_()
    target = target.to(device).requires_grad_(kind == "probability")
    weight = torch.rand(classes, device=device) + 0.5
    for smoothing, w in ((0.0, None), (0.2, weight)):
        _assert_cross_entropy_matches(x, target, weight=w, reduction=reduction, label_smoothing=smoothing)


@pytest.mark.parametrize("device", DEVICES)
def test_softmax_cross_entropy_non_contiguous_and_broadcast_grad(device):
    x = torch.randn(5, 8, 6, device=device).permute(0, 2, 1).requires_grad_()  # (5, 6, 8), class dim strided
    target = torch.randint(0, 6, (5, 8), device=device)
    loss = MF.softmax_cross_entropy(x, target, reduction="none")
    ref = F.cross_entropy(x, target, reduction="none")
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    (ours,) = torch.autograd.grad(loss.sum(), x)  # a zero-stride grad_loss
    (theirs,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_softmax_cross_entropy_all_ignored_and_empty(reduction, device):
    x = torch.randn(4, 3, device=device, requires_grad=True)
    target = torch.full((4,), -100, device=device)
    torch.testing.assert_close(
        MF.softmax_cross_entropy(x, target, reduction=reduction),
        F.cross_entropy(x, target, reduction=reduction),
        equal_nan=True,
    )
    empty = torch.randn(0, 3, device=device)
    torch.testing.assert_close(
        MF.softmax_cross_entropy(empty, target[:0], reduction=reduction),
        F.cross_entropy(empty, target[:0], reduction=reduction),
        equal_nan=True,
    )


@pytest.mark.parametrize("device", DEVICES)
def test_softmax_cross_entropy_extreme_and_masked_logits(device):
    x = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [0.0, -INF, 2.0]], device=device, requires_grad=True)
    target = torch.tensor([1, 2, 0], device=device)
    for smoothing in (0.0, 0.1):
        _assert_cross_entropy_matches(x, target, grad=torch.ones(3, device=device), reduction="none", label_smoothing=smoothing)
    nan_row = torch.tensor([[0.0, NAN, 1.0]], device=device)
    assert MF.softmax_cross_entropy(nan_row, torch.tensor([0], device=device)).isnan().all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("shape", [(64, 100), (8, 3000), (4, 10, 6, 5)])
@pytest.mark.parametrize("kind", ["index", "probability"])
@pytest.mark.parametrize("options", [{}, dict(softcap=20.0, lse_square_scale=1e-3)], ids=["plain", "softcap, z-loss"])
def test_softmax_cross_entropy_low_precision(dtype, shape, kind, options, device):
    """Against torch's own composite in the same dtype (F.cross_entropy; with the options, that of
    tests/test_softmax_cross_entropy_options.py, which is F.cross_entropy without them)."""
    x, target, weight, ignore_index = _ce_inputs(shape, kind, dtype, True, False, device)
    kwargs = dict(weight=weight, reduction="none", label_smoothing=0.1, **options)
    exact_x = x.detach().double().requires_grad_()
    exact_t = target.detach().double().requires_grad_() if kind == "probability" else target
    exact_w = weight.double()
    exact = options_reference(exact_x, exact_t, **{**kwargs, "weight": exact_w})
    loss = MF.softmax_cross_entropy(x, target, **kwargs)
    native = options_reference(x, target, **kwargs)
    assert loss.dtype == dtype
    assert_within_native_error(loss, native, exact.detach())
    grad = torch.rand_like(exact).to(dtype)
    inputs, exact_inputs = ((x, target), (exact_x, exact_t)) if kind == "probability" else ((x,), (exact_x,))
    exact_grads = torch.autograd.grad(exact, exact_inputs, grad.double())
    for ours, theirs, e in zip(
        torch.autograd.grad(loss, inputs, grad), torch.autograd.grad(native, inputs, grad), exact_grads
    ):
        assert_within_native_error(ours, theirs, e)


# The softcap and the z-loss (lse_square_scale) against the float64 composite of
# tests/test_softmax_cross_entropy_options.py, in every layout.
CE_OPTIONS = [dict(softcap=2.0), dict(lse_square_scale=0.05), dict(softcap=2.0, lse_square_scale=0.05)]
CE_OPTION_IDS = ["softcap", "z-loss", "both"]


def _exact(tensor):
    """The same values in float64 (index targets as int64), a leaf that requires grad where the tensor does."""
    if not tensor.is_floating_point():
        return tensor.long()
    return tensor.detach().double().requires_grad_(tensor.requires_grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("options", CE_OPTIONS, ids=CE_OPTION_IDS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("kind", ["index", "probability"])
@pytest.mark.parametrize("shape", CE_SHAPES, ids=str)
def test_softmax_cross_entropy_options_match_composite(shape, kind, reduction, options, device):
    x, target, weight, ignore_index = _ce_inputs(shape, kind, torch.float32, True, True, device)
    kwargs = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=0.1, **options)
    loss = MF.softmax_cross_entropy(x, target, weight=weight, **kwargs)
    exact_x, exact_target = _exact(x), _exact(target)
    exact = options_reference(exact_x, exact_target, weight=weight.double(), **kwargs)
    torch.testing.assert_close(loss.double(), exact, rtol=2e-5, atol=2e-6)
    grad = torch.randn_like(exact)
    inputs, exact_inputs = ((x, target), (exact_x, exact_target)) if kind == "probability" else ((x,), (exact_x,))
    for ours, theirs in zip(torch.autograd.grad(loss, inputs, grad.float()), torch.autograd.grad(exact, exact_inputs, grad)):
        torch.testing.assert_close(ours.double(), theirs, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("kind", ["index", "probability"])
@pytest.mark.parametrize("shape", [(7,), (5, 37), (3, 4, 5, 2)], ids=str)
def test_softmax_cross_entropy_options_gradcheck(shape, kind, reduction, device):
    x, target, weight, ignore_index = _ce_inputs(shape, kind, torch.float64, True, True, device)
    kwargs = dict(weight=weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=0.1, softcap=2.0,
                  lse_square_scale=0.05)
    if kind == "probability":
        fn, inputs = (lambda x, t: MF.softmax_cross_entropy(x, t, **kwargs)), (x, target)
    else:
        fn, inputs = (lambda x: MF.softmax_cross_entropy(x, target, **kwargs)), (x,)
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("device", DEVICES)
def test_softmax_cross_entropy_module_matches_nn(device):
    weight = torch.rand(5) + 0.5
    ours = torch_manualbp.SoftmaxCrossEntropyLoss(weight=weight, ignore_index=2, label_smoothing=0.1).to(device)
    ref = nn.CrossEntropyLoss(weight=weight, ignore_index=2, label_smoothing=0.1).to(device)
    assert ours.weight.device.type == device
    x = torch.randn(16, 5, 3, device=device, requires_grad=True)
    target = torch.randint(0, 5, (16, 3), device=device)
    loss, expected = ours(x, target), ref(x, target)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(loss, x)[0], torch.autograd.grad(expected, x)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(3000, 50), (6, 5000), (64, 7, 33)])
def test_softmax_cross_entropy_deterministic_and_inputs_untouched(shape, device):
    x, target, weight, _ = _ce_inputs(shape, "index", torch.float32, True, False, device)
    copies = [x.detach().clone(), target.clone()]
    runs = []
    for _ in range(2):
        loss = MF.softmax_cross_entropy(x, target, weight=weight, label_smoothing=0.1)
        runs.append((loss.detach(), torch.autograd.grad(loss, x)[0]))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert torch.equal(x, copies[0]) and torch.equal(target, copies[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["index", "probability"])
def test_softmax_cross_entropy_ops_do_not_synchronize(kind, device):
    case = ((32, 10), kind, "mean", True, -100, 0.1)
    args = softmax_cross_entropy_backward_args(case, torch.float32, False, True, [True, True], device)
    _, input, target, weight, _, _, _, reduction, ignore_index, label_smoothing, output_mask, _, _ = args
    for lse_square_scale, softcap in ((0.0, None), (0.1, 2.0)):  # the z-loss counts its positions on the device
        with no_host_sync(device):
            loss, max_logit, log_sum, normalizer = ops.softmax_cross_entropy_forward(
                input, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale, softcap
            )
            grad_input, grad_target = ops.softmax_cross_entropy_backward(
                torch.ones_like(loss), input, target, weight, max_logit, log_sum, normalizer, reduction,
                ignore_index, label_smoothing, output_mask, lse_square_scale, softcap,
            )
        assert loss.shape == () and max_logit.shape == log_sum.shape == (32,) and normalizer.shape == ()
        assert grad_input.shape == input.shape
        assert grad_target.shape == (input.shape if kind == "probability" else (0,))


# (inputs on `device`, exception, message fragment)
CE_BAD_INPUT = [
    (lambda d: (torch.randn(4, 3, device=d), torch.zeros(4, device=d, dtype=torch.int32), None), RuntimeError, "int64 or uint8"),
    (lambda d: (torch.randn(4, 3, device=d), torch.zeros(5, device=d, dtype=torch.int64), None), ValueError, "batch_size"),
    (lambda d: (torch.randn(4, 3, device=d), torch.zeros(4, device=d, dtype=torch.int64), torch.rand(4, device=d)), RuntimeError, "weight"),
    (lambda d: (torch.ones(4, 3, device=d, dtype=torch.int64), torch.zeros(4, device=d, dtype=torch.int64), None), TypeError, "floating-point"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("make,exc,fragment", CE_BAD_INPUT)
def test_softmax_cross_entropy_bad_input(make, exc, fragment, device):
    x, target, weight = make(device)
    with pytest.raises(exc, match=fragment):
        MF.softmax_cross_entropy(x, target, weight=weight)


@needs_gpu
def test_softmax_cross_entropy_inputs_on_two_devices():
    with pytest.raises(RuntimeError, match="same device"):
        MF.softmax_cross_entropy(torch.randn(4, 3, device="cuda"), torch.zeros(4, dtype=torch.int64))


# An out-of-range class index is never read: the CPU op raises IndexError; the CUDA kernels stop with a
# device-side assert, as torch's own CUDA loss does, printing one message (one thread per position checks).
# The CUDA run is a child process: the assert leaves its CUDA context unusable.
OUT_OF_RANGE_SHAPES = {"rows sharing a warp": (4, 37), "a block per row": (2, 1500), "spatial": (2, 64, 3)}


def call_with_out_of_range_target(layout, stage, device):
    """The forward or the backward op with a class index past the last class at one position."""
    shape = OUT_OF_RANGE_SHAPES[layout]
    case = (shape, "index", "mean", False, -100, 0.0)
    args = softmax_cross_entropy_backward_args(case, torch.float32, False, True, [True, False], device)
    grad_loss, input, target, weight, max_logit, log_sum, normalizer, reduction, ignore_index, smoothing, mask, *_ = args
    target = target.clone()
    target.view(-1)[1] = shape[1] + 3
    if stage == "forward":
        ops.softmax_cross_entropy_forward(input, target, weight, reduction, ignore_index, smoothing)
    else:
        ops.softmax_cross_entropy_backward(
            grad_loss, input, target, weight, max_logit, log_sum, normalizer, reduction, ignore_index, smoothing, mask
        )
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stage", ["forward", "backward"])
@pytest.mark.parametrize("layout", list(OUT_OF_RANGE_SHAPES))
def test_softmax_cross_entropy_out_of_range_target(layout, stage, device):
    message = f"Target {OUT_OF_RANGE_SHAPES[layout][1] + 3} is out of bounds"
    if device == "cpu":
        with pytest.raises(IndexError, match=message):
            call_with_out_of_range_target(layout, stage, device)
        return
    script = textwrap.dedent(
        f"""
        from test_cuda import call_with_out_of_range_target
        call_with_out_of_range_target({layout!r}, {stage!r}, "cuda")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=os.path.dirname(__file__)
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert "device-side assert" in output, output[-2000:]
    assert output.count(message) == 1, output[-4000:]



# ---- LinearCrossEntropy ----------------------------------------------------------------------------------
def linear_cross_entropy_reference(x, w, t, b=None, weight=None, reduction="mean", ignore_index=-100,
                                   label_smoothing=0.0, lse_square_scale=0.0, softcap=None):
    """F.linear, the softcap, F.cross_entropy, the z-loss per non-ignored token ('mean': over their count)."""
    logits = F.linear(x, w, b)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    classes = w.shape[0]
    probability = t.shape == logits.shape
    flat = logits.reshape(-1, classes)
    flat_t = t.reshape(-1, classes) if probability else t.reshape(-1).long()
    loss = F.cross_entropy(flat, flat_t, weight=weight, ignore_index=ignore_index, reduction="none",
                           label_smoothing=label_smoothing)
    kept = torch.ones_like(loss, dtype=torch.bool) if probability else flat_t != ignore_index
    if weight is None or probability:
        normalizer = kept.sum() if not probability else torch.tensor(loss.numel(), device=loss.device)
    else:
        normalizer = (weight[torch.where(kept, flat_t, 0)] * kept).sum()
    z_loss = lse_square_scale * torch.logsumexp(flat, -1).square() * kept
    if reduction == "none":
        return (loss + z_loss).reshape(logits.shape[:-1])
    if reduction == "sum":
        return loss.sum() + z_loss.sum()
    return loss.sum() / normalizer + z_loss.sum() / kept.sum()


# (token shape, in_features, classes, target kind, reduction, bias, class weight, options); index targets
# have an ignored token, which CUDA keeps in its chunk and the CPU drops.
LCE_CASES = [
    ((33,), 16, 37, "index", "mean", True, False, {}),
    ((4, 9), 8, 1500, "index", "none", False, True, dict(label_smoothing=0.1)),
    ((40,), 8, 5000, "index", "sum", True, True, dict(softcap=5.0, lse_square_scale=1e-3, chunk_budget=5000 * 4 * 7)),
    ((12,), 8, 300, "probability", "mean", True, False, dict(label_smoothing=0.2, softcap=3.0)),
    ((3, 4), 8, 40, "probability", "none", False, True, dict(lse_square_scale=0.01)),
]


def _lce_call(args, fn):
    (x, w, b, t, weight, reduction, ignore_index, smoothing, z_loss, softcap, _, budget) = args
    kwargs = dict(linear_bias=b, weight=weight, reduction=reduction, ignore_index=ignore_index,
                  label_smoothing=smoothing, lse_square_scale=z_loss, softcap=softcap)
    if fn is MF.linear_cross_entropy:
        return fn(x, w, t, chunk_budget=budget, **kwargs)
    return linear_cross_entropy_reference(x, w, t, b=b, **{k: v for k, v in kwargs.items() if k != "linear_bias"})


def _lce_loss_and_grads(args, fn, grad_output_seed=0):
    loss = _lce_call(args, fn)
    inputs = [v for v in (args[0], args[1], args[2], args[3]) if isinstance(v, torch.Tensor) and v.requires_grad]
    generator = torch.Generator().manual_seed(grad_output_seed)
    grad_output = torch.randn(loss.shape, generator=generator, dtype=torch.float64).to(loss)
    return (loss.detach(), *torch.autograd.grad(loss, inputs, grad_output))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", LCE_CASES, ids=str)
def test_linear_cross_entropy_matches_composite(case, device):
    for dtype, tolerance in ((torch.float64, dict(rtol=1e-9, atol=1e-10)), (torch.float32, dict(rtol=2e-5, atol=2e-6))):
        args = linear_cross_entropy_forward_args(case, dtype, True, True, device=device)
        for ours, ref in zip(_lce_loss_and_grads(args, MF.linear_cross_entropy), _lce_loss_and_grads(args, None)):
            torch.testing.assert_close(ours, ref, **tolerance)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_cross_entropy_gradcheck(reduction, device):
    case = ((5,), 3, 7, "index", reduction, True, True, dict(label_smoothing=0.1, softcap=2.0, lse_square_scale=0.1,
                                                              chunk_budget=7 * 8 * 2))
    args = list(linear_cross_entropy_forward_args(case, torch.float64, True, True, device=device))

    def fn(x, w, b):
        args[0:3] = x, w, b
        return _lce_call(tuple(args), MF.linear_cross_entropy)

    assert torch.autograd.gradcheck(fn, tuple(args[0:3]))
    assert torch.autograd.gradgradcheck(fn, tuple(args[0:3]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_linear_cross_entropy_low_precision(dtype, device):
    case = ((64,), 32, 3001, "index", "mean", True, False, dict(label_smoothing=0.1, chunk_budget=3001 * 2 * 9))
    exact_args = linear_cross_entropy_forward_args(case, torch.float64, True, True, device=device)
    exact = _lce_loss_and_grads(exact_args, None)
    low = tuple(a.detach().to(dtype).requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                for a in exact_args)
    for ours, native, e in zip(_lce_loss_and_grads(low, MF.linear_cross_entropy), _lce_loss_and_grads(low, None), exact):
        assert ours.dtype == dtype
        assert_within_native_error(ours, native, e)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["index", "probability"])
def test_linear_cross_entropy_ops_do_not_synchronize(kind, device):
    case = ((32,), 8, 100, kind, "mean", True, True, dict(label_smoothing=0.1, chunk_budget=100 * 4 * 5))
    forward_args = linear_cross_entropy_forward_args(case, torch.float32, False, True, [True, True, True], device)
    backward_args = linear_cross_entropy_backward_args(case, torch.float32, False, True, [True] * 4, device)
    with no_host_sync(device):
        loss, grad_input, grad_weight, grad_bias = ops.linear_cross_entropy_forward(*forward_args)
        grads = ops.linear_cross_entropy_backward(*backward_args)
    assert loss.shape == () and grad_input.shape == (32, 8) and grad_weight.shape == (100, 8) and grad_bias.shape == (100,)
    assert grads[3].shape == ((32, 100) if kind == "probability" else (0,))


@pytest.mark.parametrize("device", DEVICES)
def test_linear_cross_entropy_deterministic_and_inputs_untouched(device):
    case = ((50,), 16, 700, "index", "mean", True, True, dict(chunk_budget=700 * 4 * 9))
    args = linear_cross_entropy_forward_args(case, torch.float32, True, True, device=device)
    copies = [a.detach().clone() for a in args[:5] if isinstance(a, torch.Tensor)]
    runs = [_lce_loss_and_grads(args, MF.linear_cross_entropy) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    for a, c in zip([a for a in args[:5] if isinstance(a, torch.Tensor)], copies):
        assert torch.equal(a.detach(), c)


def call_linear_cross_entropy_with_out_of_range_target(device):
    case = ((6,), 4, 9, "index", "mean", False, False, {})
    args = list(linear_cross_entropy_forward_args(case, torch.float32, False, True, device=device))
    target = args[3].clone()
    target[2] = 12
    args[3] = target
    ops.linear_cross_entropy_forward(*args)
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("device", DEVICES)
def test_linear_cross_entropy_out_of_range_target(device):
    message = "Target 12 is out of bounds"
    if device == "cpu":
        with pytest.raises(IndexError, match=message):
            call_linear_cross_entropy_with_out_of_range_target(device)
        return
    script = "from test_cuda import call_linear_cross_entropy_with_out_of_range_target as f; f('cuda')"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=os.path.dirname(__file__)
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert "device-side assert" in output, output[-2000:]
    assert output.count(message) == 1, output[-4000:]


# ---- the vocab-parallel ops (csrc/vocab_parallel.cpp) on each device, the ranks emulated in one process ----
# The collectives of torch_manualbp/layers/vocab_parallel.py replaced by their in-process equivalents over the
# blocks (max and sum of the same per-token columns); the multi-process runs are tests/test_vocab_parallel.py.
VOCAB_BLOCKS = [5, 1, 9, 6]  # 21 classes, uneven
VOCAB_OPTIONS = [
    dict(kind="index", reduction="mean", label_smoothing=0.1, lse_square_scale=0.01, softcap=3.0, weighted=True),
    dict(kind="index", reduction="none", label_smoothing=0.0, lse_square_scale=0.0, softcap=None, weighted=False),
    dict(kind="probability", reduction="sum", label_smoothing=0.2, lse_square_scale=0.02, softcap=None, weighted=True),
]


def _vocab_parallel_in_one_process(layer, device, options, logits, x, W, b, target, weight, upstream):
    """(loss, grads of each block's logits or (dX, [dW_r], [db_r]), [grad_target_r]) through the ops on `device`."""
    from torch_manualbp.layers import vocab_parallel as VP

    probability = options["kind"] == "probability"
    call = VP.Call(layer, None, options["reduction"], -100, options["label_smoothing"], options["lse_square_scale"],
                   options["softcap"], chunk_budget=3 * 9 * 8)
    call.probability = probability
    call.total_classes = sum(VOCAB_BLOCKS)
    starts = [sum(VOCAB_BLOCKS[:r]) for r in range(len(VOCAB_BLOCKS))]
    blocks = [slice(start, start + size) for start, size in zip(starts, VOCAB_BLOCKS)]

    def block_target(s):
        return target[:, s].contiguous() if probability else target

    def block_weight(s):
        return None if weight is None else weight[s].contiguous()

    partials = []
    for start, s in zip(starts, blocks):
        if layer == "softmax_cross_entropy":
            partials.append(ops.vocab_parallel_cross_entropy_statistics(
                logits[:, s].contiguous(), block_target(s), block_weight(s), -100, options["label_smoothing"],
                options["softcap"], start, call.total_classes))
        else:
            partials.append(ops.vocab_parallel_linear_cross_entropy_statistics(
                x, W[s].contiguous(), None if b is None else b[s].contiguous(), block_target(s), block_weight(s), -100,
                options["label_smoothing"], options["softcap"], start, call.total_classes, call.chunk_budget))
    M = torch.stack([p[:, 0] for p in partials]).amax(0)
    columns = sum(VP.shifted_columns(p, M) for p in partials)
    ce, z_loss, given, kept, target_weight = VP.per_token(call, M, columns, target)
    loss, ce_normalizer, z_normalizer = VP.reduce_loss(call, ce, z_loss, kept, target_weight, logits.dtype,
                                                       (target.shape[0],))
    k_ce, k_z = VP.gradient_scales(call, upstream, kept, ce_normalizer, z_normalizer, given.dtype)
    grads, grad_targets = [], []
    for start, s in zip(starts, blocks):
        if layer == "softmax_cross_entropy":
            g, gt = ops.vocab_parallel_cross_entropy_gradient(
                logits[:, s].contiguous(), block_target(s), block_weight(s), given, k_ce, k_z, -100,
                options["label_smoothing"], options["lse_square_scale"], options["softcap"], start, call.total_classes,
                [True, probability])
            grads.append(g)
        else:
            g = ops.vocab_parallel_linear_cross_entropy_gradient(
                x, W[s].contiguous(), None if b is None else b[s].contiguous(), block_target(s), block_weight(s), given,
                k_ce, k_z, -100, options["label_smoothing"], options["lse_square_scale"], options["softcap"], start,
                call.total_classes, [True, True, b is not None, probability], call.chunk_budget)
            grads.append(g[:3])
            gt = g[3]
        grad_targets.append(gt)
    return loss, grads, grad_targets


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layer", ["softmax_cross_entropy", "linear_cross_entropy"])
@pytest.mark.parametrize("options", VOCAB_OPTIONS, ids=lambda o: f"{o['kind']}-{o['reduction']}")
def test_vocab_parallel_ops_match_native(device, layer, options):
    """The blocks' statistics and gradients, combined as the collectives would, against native ops on the whole
    logits: float64, every block of an uneven split, with and without softcap, z-loss, smoothing, weights."""
    g = torch.Generator().manual_seed(5)
    C, N, D = sum(VOCAB_BLOCKS), 9, 6
    f64 = dict(dtype=torch.float64)
    x = torch.randn(N, D, generator=g, **f64).to(device)
    W = (torch.randn(C, D, generator=g, **f64) * 2).to(device)
    b = torch.randn(C, generator=g, **f64).to(device) if layer == "linear_cross_entropy" else None
    logits = (torch.randn(N, C, generator=g, **f64) * 3).to(device)
    probability = options["kind"] == "probability"
    if probability:
        target = torch.rand(N, C, generator=g, **f64).to(device)
    else:
        target = torch.randint(0, C, (N,), generator=g)
        target[2] = -100
        target = target.to(device)
    weight = (torch.rand(C, generator=g, **f64) + 0.3).to(device) if options["weighted"] else None
    upstream = torch.randn(N, generator=g, **f64).to(device) if options["reduction"] == "none" else \
        torch.tensor(1.3, **f64, device=device)

    leaves = [t.clone().requires_grad_() for t in ((logits,) if layer == "softmax_cross_entropy" else (x, W, b)) if t is not None]
    p = target.clone().requires_grad_() if probability else target
    full_logits = leaves[0] if layer == "softmax_cross_entropy" else F.linear(*leaves)
    expected = options_reference(full_logits, p, weight, -100, options["reduction"], options["label_smoothing"],
                                 options["lse_square_scale"], options["softcap"])
    expected_grads = torch.autograd.grad((expected * upstream).sum(), leaves + ([p] if probability else []))

    loss, grads, grad_targets = _vocab_parallel_in_one_process(layer, device, options, logits, x, W, b, target, weight,
                                                               upstream)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-12, atol=1e-14)
    starts = [sum(VOCAB_BLOCKS[:r]) for r in range(len(VOCAB_BLOCKS))]
    if layer == "softmax_cross_entropy":
        for start, size, grad in zip(starts, VOCAB_BLOCKS, grads):
            torch.testing.assert_close(grad, expected_grads[0][:, start:start + size], rtol=1e-10, atol=1e-13)
    else:
        torch.testing.assert_close(sum(g[0] for g in grads), expected_grads[0], rtol=1e-10, atol=1e-13)
        for start, size, grad in zip(starts, VOCAB_BLOCKS, grads):
            torch.testing.assert_close(grad[1], expected_grads[1][start:start + size], rtol=1e-10, atol=1e-13)
            torch.testing.assert_close(grad[2], expected_grads[2][start:start + size], rtol=1e-10, atol=1e-13)
    if probability:
        for start, size, grad in zip(starts, VOCAB_BLOCKS, grad_targets):
            torch.testing.assert_close(grad, expected_grads[-1][:, start:start + size], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("device", DEVICES)
def test_vocab_parallel_ops_do_not_synchronize(device):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(8, 4, generator=g).to(device)
    W = torch.randn(10, 4, generator=g).to(device)
    target = torch.randint(0, 30, (8,), generator=g).to(device)
    given = torch.randn(8, 4, generator=g).to(device)
    scale = torch.rand(8, generator=g).to(device)
    logits = torch.randn(8, 10, generator=g).to(device)
    with no_host_sync(device):
        s1 = ops.vocab_parallel_cross_entropy_statistics(logits, target, None, -100, 0.1, 5.0, 10, 30)
        g1, _ = ops.vocab_parallel_cross_entropy_gradient(logits, target, None, given, scale, scale, -100, 0.1, 0.01,
                                                          5.0, 10, 30, [True, False])
        s2 = ops.vocab_parallel_linear_cross_entropy_statistics(x, W, None, target, None, -100, 0.1, None, 10, 30, 4 * 10 * 3)
        g2 = ops.vocab_parallel_linear_cross_entropy_gradient(x, W, None, target, None, given, scale, scale, -100, 0.1,
                                                              0.01, None, 10, 30, [True, True, False, False], 4 * 10 * 3)
    assert s1.shape == s2.shape == (8, 6) and g1.shape == (8, 10) and g2[0].shape == (8, 4) and g2[1].shape == (10, 4)
