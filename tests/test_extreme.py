"""Extreme inputs: saturated sigmoids, NaN and infinities, logits near the float maximum, empty batches,
a single class / output, a million classes / outputs, and (marked slow) tensors past 2**31 elements.

Every test runs on the CPU and, where a GPU is present, again on CUDA: the `device` fixture makes CUDA the
default device of the test's tensors (torch.device as a context), so the same lines test both."""
import pytest
import torch
import torch.nn.functional as F

from op_args import DEVICES
from torch_manualbp.functional import linear_sigmoid, softmax_cross_entropy

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
INF, NAN = float("inf"), float("nan")


def _mem_available_bytes(device):
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def needs_memory(gib):
    """The test runs only where its device has `gib` GiB free (host memory from /proc/meminfo, GPU memory
    from the driver): the only skip of this file besides a missing GPU (the `device` fixture checks)."""

    def mark(test):
        test.memory_gib = gib
        return test

    return mark


@pytest.fixture(autouse=True, params=DEVICES)
def device(request):
    """Each test on each device: CUDA as the default device of its tensors; on the CPU nothing changes."""
    gib = getattr(request.function, "memory_gib", None)
    if gib is not None:
        available = _mem_available_bytes(request.param) / 2**30
        if available < gib:
            pytest.skip(f"needs {gib} GiB of free {request.param} memory, {available:.1f} GiB available")
    if request.param == "cpu":
        yield request.param
        return
    with torch.device(request.param):
        yield request.param


def _generator():
    """A seeded generator of the default device (the CPU's unless the test runs on CUDA)."""
    return torch.Generator(device=torch.get_default_device()).manual_seed(0)


def _native_linear_sigmoid(x, weight, bias=None):
    z = x @ weight.t()
    return torch.sigmoid(z if bias is None else z + bias)


def _both(fn_inputs, grad_output=None):
    """(ours, native): output and gradients of every input, from the same leaves' values."""
    results = []
    for fn in (linear_sigmoid, _native_linear_sigmoid):
        leaves = [None if t is None else t.detach().clone().requires_grad_() for t in fn_inputs]
        y = fn(*leaves)
        g = torch.ones_like(y) if grad_output is None else grad_output
        grads = torch.autograd.grad(y, [t for t in leaves if t is not None], g)
        results.append((y.detach(), *grads))
    return results


# ---- LinearSigmoid: saturation, NaN, infinities ---------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_saturated_sigmoid_is_exactly_torch_sigmoid(dtype):
    # z = x exactly (one input feature, weight 1, no bias), over the whole range of the dtype: y is bitwise
    # torch.sigmoid(z), so exactly 0 and 1 where torch saturates (z < -88.7 / z > 16.6 in float32), and the
    # gradient there is exactly 0. Regression: y used to be a denormal for -104 < z < -88.7 (float32) and
    # -745 < z < -709 (float64), where torch gives 0.
    limit = torch.finfo(dtype).max
    ends = torch.tensor([-INF, -limit, -1e4, -745.0, -200.0, -104.0, -100.0, 100.0, 200.0, 1e4, limit, INF], dtype=torch.float64)
    z = torch.cat([ends, torch.linspace(-800, 800, 64001, dtype=torch.float64)]).to(dtype)
    weight = torch.ones(1, 1, dtype=dtype)
    (y, grad_z, _), (native_y, native_grad_z, _) = _both([z[:, None], weight])
    assert torch.equal(y[:, 0], torch.sigmoid(z))
    saturated = (native_y == 0) | (native_y == 1)
    assert (y[z > 100] == 1).all() and saturated.sum() > 1000
    assert torch.equal(y[saturated], native_y[saturated])
    assert (grad_z[saturated] == 0).all()
    assert not y.isnan().any() and not grad_z.isnan().any()
    torch.testing.assert_close(grad_z, native_grad_z)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_nan_and_infinities_propagate_like_native(dtype):
    big = torch.finfo(dtype).max / 4
    x = torch.tensor([[INF, 1.0], [-INF, 1.0], [NAN, 1.0], [INF, -INF], [big, big], [-big, -big], [0.5, -0.25]], dtype=dtype)
    weight = torch.tensor([[1.0, 1.0], [0.0, 1.0], [2.0, 0.0]], dtype=dtype)
    bias = torch.tensor([0.0, INF, -1.0], dtype=dtype)
    for inputs in ([x, weight, bias], [x, weight, None]):
        ours, native = _both(inputs)
        for got, expected in zip(ours, native):
            torch.testing.assert_close(got, expected, equal_nan=True)
    # A NaN row stays in its row: the other rows' outputs and their input gradients are finite.
    ours, _ = _both([x[2:3].expand(4, 2).contiguous().index_fill(0, torch.tensor([1, 3]), 0.5), weight, None])
    assert ours[0][[1, 3]].isfinite().all() and ours[0][[0, 2]].isnan().all()
    assert ours[1][[1, 3]].isfinite().all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logits_near_float_max_saturate_without_nan(dtype):
    big = torch.finfo(dtype).max
    x = torch.tensor([[big], [-big], [big / 2], [-big / 2]], dtype=dtype)
    weight = torch.tensor([[1.0], [0.5]], dtype=dtype)
    bias = torch.tensor([big, -big], dtype=dtype)  # z + b overflows to +-inf in the first two rows
    ours, native = _both([x, weight, bias])
    for got, expected in zip(ours, native):
        torch.testing.assert_close(got, expected, equal_nan=True)
    assert not any(t.isnan().any() for t in ours)


# ---- LinearSigmoid: empty, single, huge ------------------------------------------------------------------


@pytest.mark.parametrize(
    "input_shape, out_features, bias_shape",
    [((0, 4), 3, (3,)), ((2, 0, 4), 3, (3,)), ((5, 0), 3, (3,)), ((0,), 3, (3,)), ((4, 3), 0, (0,)), ((0, 0), 0, (0,)), ((2, 0, 4), 3, (2, 1, 3))],
)
def test_empty_batches_and_features_match_native(input_shape, out_features, bias_shape):
    x = torch.randn(input_shape, dtype=torch.float64)
    weight = torch.randn(out_features, input_shape[-1], dtype=torch.float64)
    bias = torch.randn(bias_shape, dtype=torch.float64)
    ours, native = _both([x, weight, bias])
    for got, expected in zip(ours, native):
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("input_shape, out_features", [((0,), 3), ((4, 0), 3), ((4, 3), 0), ((2, 0, 3), 2)])
def test_double_backward_with_empty_dims_matches_native(input_shape, out_features):
    # Regression: the double backward reshaped with -1, which fails on 0 elements (in or out features 0).
    x = torch.randn(input_shape, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(out_features, input_shape[-1], dtype=torch.float64, requires_grad=True)
    grads = []
    for fn in (linear_sigmoid, _native_linear_sigmoid):
        y = fn(x, weight)
        gx, gw = torch.autograd.grad(y, [x, weight], torch.ones_like(y), create_graph=True)
        grads.append(torch.autograd.grad(gx.sum() + gw.sum(), [x, weight], allow_unused=True, materialize_grads=True))
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("bias_shape", [(1,), (6, 1), (1, 1), ()])
def test_single_output_feature_matches_native(bias_shape):
    x = torch.randn(6, 5, dtype=torch.float64)
    weight = torch.randn(1, 5, dtype=torch.float64)
    ours, native = _both([x, weight, torch.randn(bias_shape, dtype=torch.float64)])
    for got, expected in zip(ours, native):
        torch.testing.assert_close(got, expected)


def test_a_million_output_features_match_native():
    x = torch.randn(3, 4)
    weight = torch.randn(1_000_000, 4)
    bias = torch.randn(1_000_000)
    grad_output = torch.randn(3, 1_000_000)
    ours, native = _both([x, weight, bias], grad_output)
    for got, expected in zip(ours, native):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_bias_gradient_over_two_million_rows_is_accurate():
    # Regression: the fused bias gradient summed its 32-row block sums with a running sum, which lost
    # 7e-4 relative in float32 at 2**21 rows (native's dz.sum(0): 5e-7); a pairwise sum loses ~1e-6.
    rows = 2**21
    x = ((torch.arange(rows) % 7 - 3) / 4)[:, None]
    weight = torch.randn(16, 1)
    bias = torch.randn(16, requires_grad=True)
    (grad_bias,) = torch.autograd.grad(linear_sigmoid(x, weight, bias).sum(), [bias])
    y = torch.sigmoid(x.double() @ weight.double().t() + bias.detach().double())
    expected = (y * (1 - y)).sum(0)  # every term is positive: the sum is its own magnitude bound
    assert ((grad_bias.double() - expected).abs() <= 1e-5 * expected).all()


# ---- SoftmaxCrossEntropy ---------------------------------------------------------------------------------
REDUCTIONS = ("none", "mean", "sum")


def _cross_entropy_both(x, target, grad_loss=None, **options):
    """(ours, native): loss and the gradients of the input (and of a probability target)."""
    results = []
    for fn in (softmax_cross_entropy, F.cross_entropy):
        leaves = [x.detach().clone().requires_grad_(), target.detach().clone().requires_grad_(target.is_floating_point())]
        loss = fn(*leaves, **options)
        g = torch.ones_like(loss) if grad_loss is None else grad_loss
        results.append((loss.detach(), *torch.autograd.grad(loss, [t for t in leaves if t.requires_grad], g)))
    return results


def _cross_entropy_targets(x, index):
    """Index targets (int64) and probability targets for logits x (class dim 1, or 0 when 1-D)."""
    class_dim = 0 if x.dim() == 1 else 1
    probabilities = torch.softmax(torch.randn(x.shape, dtype=torch.float64), class_dim).to(x.dtype)
    return [("index", index), ("probability", probabilities)]


NEAR_FLOAT_MAX_ROWS = [[1.0, -1.0, 0.0], [0.5, 0.5, 0.25], [-1.0, -0.5, -1.0], [1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cross_entropy_loss_of_logits_near_float_max_matches_native(dtype):
    x = torch.tensor(NEAR_FLOAT_MAX_ROWS, dtype=dtype) * torch.finfo(dtype).max
    index = torch.tensor([1, 2, 0, 1, 2])  # row 0, class 1: loss lse - x_t = +inf in any precision
    weight = torch.tensor([0.5, 1.0, 2.0], dtype=dtype)
    for _, target in _cross_entropy_targets(x, index):
        for reduction in REDUCTIONS:
            for smoothing in (0.0, 0.25):
                ours = softmax_cross_entropy(x, target, weight, reduction=reduction, label_smoothing=smoothing)
                native = F.cross_entropy(x, target, weight, reduction=reduction, label_smoothing=smoothing)
                torch.testing.assert_close(ours, native, equal_nan=True, rtol=1e-6, atol=0)


@pytest.mark.parametrize("layout", ["rows", "spatial"])
@pytest.mark.parametrize("kind", ["index", "probability"])
@pytest.mark.parametrize("offset", [1e3, 1e5, 1e7, "float max"])
def test_cross_entropy_gradient_is_shift_invariant(offset, kind, layout):
    # softmax(x + c) = softmax(x): the gradients of logits with a large common offset must be as accurate
    # as at offset 0, as torch's are (regression: the backward once formed exp(x - lse) from a float32
    # lse = m + log s, 3e-4 off at logits ~1e4 and 0.4 at ~1e7; it now keeps m and log s apart). The
    # reference is float64 on the same float32 values; with probability targets also d loss / d target,
    # (1 - eps) w ((m - x) + log s), whose size grows with the offset: compared relative to it.
    generator = _generator()
    if offset == "float max":
        x = torch.tensor(NEAR_FLOAT_MAX_ROWS) * torch.finfo(torch.float32).max
    else:
        x = (torch.randn(256, 10, generator=generator) + offset).float()
    target = torch.randint(0, x.shape[1], (x.shape[0],), generator=generator)
    if kind == "probability":
        target = torch.rand(x.shape, generator=generator).softmax(1)
    if layout == "spatial":  # the same positions as (N, C, S)
        x, target = x.t().unsqueeze(0).contiguous(), (target.t().unsqueeze(0) if kind == "probability" else target[None]).contiguous()
    options = dict(reduction="sum", label_smoothing=0.1)
    results = []
    for fn, dtype in ((softmax_cross_entropy, torch.float32), (F.cross_entropy, torch.float32), (F.cross_entropy, torch.float64)):
        leaves = [x.to(dtype).requires_grad_(), target.to(dtype).requires_grad_() if kind == "probability" else target]
        wrt = leaves if kind == "probability" else leaves[:1]
        results.append([g.double() for g in torch.autograd.grad(fn(*leaves, **options), wrt)])
    ours, native, exact = results
    assert (native[0] - exact[0]).abs().max() < 1e-6
    assert (ours[0] - exact[0]).abs().max() < 1e-6
    if kind == "probability" and offset != "float max":  # at the float max the target gradient is inf - inf
        scale = float(exact[1].abs().max())
        assert (native[1] - exact[1]).abs().max() <= 1e-6 * scale
        assert (ours[1] - exact[1]).abs().max() <= 1e-6 * scale


@pytest.mark.parametrize("layout", ["rows", "spatial"])
def test_cross_entropy_exponential_across_its_whole_range(layout):
    # The kernels' exponential (csrc/cpu/fast_exp.h) over every gap below the max it meets: probabilities
    # from 1 down to where it flushes to 0 (below e^-86) and -inf, in rows long enough to take the SIMD
    # path. Loss and gradients against float64 on the same float32 values: the gradient's worst relative
    # error no larger than native float32's (which uses Sleef's 1-ulp exponential; measured: ours 4e-7
    # rows / 1.7e-6 spatial, native 2.3e-6) or 1e-6; the terms it flushes (true value under 1e-35) within 1e-36 absolute.
    gaps = torch.cat([torch.linspace(0, 100, 4001), torch.tensor([float("inf")])])  # x = -gaps
    x = -gaps.reshape(1, -1).repeat(3, 1)
    x[1] += 7.25  # the same gaps under another max
    x[2] = x[2].flip(0)  # the max last: exponentials taken relative to earlier references, then rescaled
    target = torch.tensor([5, 1000, 4000])
    if layout == "spatial":
        x, target = x.t().unsqueeze(0).contiguous(), target[:1].reshape(1, 1).expand(1, 3).contiguous()
    for reduction in ("none", "sum"):
        leaf = x.clone().requires_grad_()
        loss = softmax_cross_entropy(leaf, target, reduction=reduction)
        (grad,) = torch.autograd.grad(loss.sum(), leaf)
        leaf64 = x.double().requires_grad_()
        loss64 = F.cross_entropy(leaf64, target, reduction=reduction)
        (grad64,) = torch.autograd.grad(loss64.sum(), leaf64)
        torch.testing.assert_close(loss.double(), loss64, rtol=1e-6, atol=0)
        leaf32 = x.clone().requires_grad_()
        (native_grad,) = torch.autograd.grad(F.cross_entropy(leaf32, target, reduction=reduction).sum(), leaf32)
        significant = grad64.abs() > 1e-35
        worst = ((grad.double() - grad64).abs()[significant] / grad64.abs()[significant]).max()
        native_worst = ((native_grad.double() - grad64).abs()[significant] / grad64.abs()[significant]).max()
        assert worst <= max(float(native_worst), 1e-6), (float(worst), float(native_worst))
        assert ((grad.double() - grad64).abs()[~significant] <= 1e-36).all()
        assert (grad[leaf == -float("inf")] == 0).all()  # masked classes: probability exactly 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("layout", ["rows", "spatial"])
def test_cross_entropy_nan_and_infinities_match_native(dtype, layout):
    x = torch.tensor(
        [[0.0, -INF, 1.0, 2.0], [NAN, 0.0, 0.0, 1.0], [INF, 0.0, 0.0, 1.0], [-INF, -INF, -INF, -INF], [INF, -INF, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]],
        dtype=dtype,
    )
    index = torch.tensor([0, 1, -100, 2, 3, 1])
    if layout == "spatial":  # the same positions as (N, C, S)
        x, index = x.t().unsqueeze(0).contiguous(), index[None]
    weight = torch.tensor([1.0, 0.5, 2.0, 1.5], dtype=dtype)
    # bfloat16: both round differently from float32 internals (a few ulp); NaN placement is the point here.
    tolerance = dict(rtol=4e-2, atol=4e-3) if dtype == torch.bfloat16 else {}
    for kind, target in _cross_entropy_targets(x, index):
        for reduction in REDUCTIONS:
            for smoothing, w in ((0.0, None), (0.2, weight)):
                ours, native = _cross_entropy_both(x, target, weight=w, reduction=reduction, label_smoothing=smoothing)
                for got, expected in zip(ours, native):
                    assert torch.equal(got.isnan(), expected.isnan()), (kind, reduction, smoothing)
                    torch.testing.assert_close(got, expected, equal_nan=True, **tolerance)


@pytest.mark.parametrize("shape", [(0, 5), (0, 5, 3), (2, 5, 0), (2, 5, 0, 3), (0, 1)], ids=str)
def test_cross_entropy_empty_batches_match_native(shape):
    x = torch.randn(shape, dtype=torch.float64)
    positions = shape[:1] + shape[2:]
    for _, target in _cross_entropy_targets(x, torch.zeros(positions, dtype=torch.long)):
        for reduction in REDUCTIONS:
            for smoothing in (0.0, 0.3):
                ours, native = _cross_entropy_both(x, target, reduction=reduction, label_smoothing=smoothing)
                for got, expected in zip(ours, native):
                    assert got.shape == expected.shape
                    torch.testing.assert_close(got, expected, equal_nan=True)


@pytest.mark.parametrize("shape", [(1,), (7, 1), (3, 1, 5)], ids=str)
def test_cross_entropy_single_class_matches_native(shape):
    # One class: softmax is 1, the index loss is 0 and its gradient 0, whatever the logit.
    x = torch.randn(shape, dtype=torch.float64) * 50
    positions = shape[:1] + shape[2:] if len(shape) > 1 else ()
    index = torch.zeros(positions, dtype=torch.long)
    for _, target in _cross_entropy_targets(x, index):
        for reduction in REDUCTIONS:
            for smoothing, weight in ((0.0, None), (0.5, torch.tensor([3.0], dtype=torch.float64))):
                options = dict(weight=weight, reduction=reduction, label_smoothing=smoothing)
                ours, native = _cross_entropy_both(x, target, **options)
                for got, expected in zip(ours, native):
                    torch.testing.assert_close(got, expected)
    assert (softmax_cross_entropy(x, index, reduction="none") == 0).all()


@pytest.mark.parametrize("shape", [(4, 1_000_000), (2, 1_000_000, 3), (1_000_000,)], ids=str)
def test_cross_entropy_a_million_classes_matches_native(shape):
    generator = _generator()
    x = torch.randn(shape, generator=generator) * 3
    classes = 1_000_000
    positions = shape[:1] + shape[2:] if len(shape) > 1 else ()
    index = torch.randint(0, classes, positions, generator=generator)
    weight = torch.rand(classes, generator=generator) + 0.1
    for _, target in _cross_entropy_targets(x, index):
        for reduction, smoothing, w in (("mean", 0.0, None), ("none", 0.1, weight), ("sum", 0.3, weight)):
            options = dict(reduction=reduction, label_smoothing=smoothing)
            ours, native = _cross_entropy_both(x, target, weight=w, **options)
            exact, _ = _cross_entropy_both(
                x.double(), target.double() if target.is_floating_point() else target,
                weight=None if w is None else w.double(), **options,
            )
            # Sums over a million classes in float32: at most twice native's error against float64.
            for got, expected, reference in zip(ours, native, exact):
                ours_error = (got.double() - reference).abs().max()
                native_error = (expected.double() - reference).abs().max()
                assert ours_error <= 2 * native_error + 1e-6 * reference.abs().max(), (reduction, ours_error, native_error)


# ---- LinearSigmoid: past 2**31 elements ------------------------------------------------------------------
# x (rows, 1) takes 7 values, so every row of y (rows, 1024) and the full gradients are known in float64
# from 7 kinds of rows; rows = 2**21 + 3 puts the last rows' elements past 2**31 (64-bit indexing).
HUGE_ROWS, HUGE_OUT = 2**21 + 3, 1024


@pytest.mark.slow
@needs_memory(20)  # y and grad_z: 8 GiB each
def test_linear_sigmoid_past_2_31_elements():
    # float32 only: in bfloat16, ATen's own GEMM x @ W^T with in_features 1 takes ~6 minutes on AVX2.
    assert HUGE_ROWS * HUGE_OUT > 2**31
    generator = _generator()
    x = ((torch.arange(HUGE_ROWS) % 7 - 3) / 4)[:, None].requires_grad_()
    weight = torch.randn(HUGE_OUT, 1, generator=generator).requires_grad_()
    bias = torch.randn(HUGE_OUT, generator=generator).requires_grad_()
    y = linear_sigmoid(x, weight, bias)
    # d(sum y)/dz arrives as a zero-stride tensor: no third huge buffer.
    grad_x, grad_weight, grad_bias = torch.autograd.grad(y.sum(), [x, weight, bias])
    spans = (slice(0, 7), slice(2**21 - 7, 2**21), slice(HUGE_ROWS - 7, HUGE_ROWS))  # the last lie past 2**31
    y_rows = [y[span].detach().double() for span in spans]
    del y  # before any assertion: a failure's traceback would keep it alive for the next test

    # Rows r and r + 7 are computed from the same values: bitwise equal outputs, wherever they lie. The
    # 7 kinds of rows (rows 0..6) against float64; the gradients from them, weighted by how often each
    # kind occurs (dz from the saved y as the kernel reads it).
    values = torch.arange(-3, 4, dtype=torch.float64) / 4
    counts = (HUGE_ROWS // 7 + (torch.arange(7) < HUGE_ROWS % 7)).double()
    y_kind = y_rows[0]
    y_ref = torch.sigmoid(values[:, None] * weight.detach().double().t() + bias.detach().double())  # (7, out)
    tolerance = 1e-6
    torch.testing.assert_close(y_kind, y_ref, rtol=0, atol=tolerance)
    dz_ref = y_kind * (1 - y_kind)
    for span, y_got in zip(spans, y_rows):
        row_ids = torch.arange(span.start, span.stop) % 7
        assert torch.equal(y_got, y_kind[row_ids]), f"rows {span} differ from rows of the same values"
        torch.testing.assert_close(grad_x[span].double(), (dz_ref @ weight.detach().double())[row_ids], rtol=tolerance * 8, atol=tolerance * 8)
    # Sums over 2**21 rows: their rounding error is relative to the sum of the terms' magnitudes. The weight
    # gradient is a GEMM over 2**21 rows (MKL sgemm loses ~3e-3 there, for native torch alike).
    bias_rtol, weight_rtol = 1e-5, 1e-2
    for got, terms, rtol in (
        (grad_bias, counts[:, None] * dz_ref, bias_rtol),
        (grad_weight[:, 0], (counts * values)[:, None] * dz_ref, weight_rtol),
    ):
        error = (got.double() - terms.sum(0)).abs()
        assert (error <= rtol * terms.abs().sum(0)).all(), f"largest error {error.max().item()}"


# ---- SoftmaxCrossEntropy: past 2**31 elements ------------------------------------------------------------
# Logits built from a few distinct rows (positions), so that float64 references over every position are
# sums over those few kinds, weighted by how often each occurs; gradients are checked at the first and
# last positions (the last lie past 2**31).


def _periodic(period, length, dtype):
    """0, 1, ..., period - 1, 0, 1, ... of `length` elements, without an int64 tensor of that length."""
    return torch.arange(period, dtype=dtype).repeat(length // period + 1)[:length]


def _cross_entropy_reference(logits, target, weight, smoothing):
    """Per position (rows of logits (P, C) in float64, target (P,)): loss and d loss / d logits."""
    classes = logits.shape[1]
    lse = logits.logsumexp(1, keepdim=True)
    a = weight * ((1 - smoothing) * F.one_hot(target, classes).double() + smoothing / classes)
    loss = (a * (lse - logits)).sum(1)
    grad = torch.softmax(logits, 1) * a.sum(1, keepdim=True) - a
    return loss, grad


@pytest.mark.slow
@needs_memory(11)
def test_cross_entropy_rows_past_2_31_elements():
    rows, classes, smoothing = 2**21 + 3, 1024, 0.1
    assert rows * classes > 2**31
    generator = _generator()
    base = (torch.randn(7, classes, generator=generator) * 3).bfloat16()
    weight = (torch.rand(classes, generator=generator) + 0.5).bfloat16()
    row_kind = torch.arange(rows) % 7
    target = (torch.arange(rows) * 13 + torch.arange(rows) // 7) % classes
    x = base.index_select(0, row_kind).requires_grad_()  # (rows, classes), 4 GiB
    loss = softmax_cross_entropy(x, target, weight, label_smoothing=smoothing)
    (grad,) = torch.autograd.grad(loss, [x])
    firsts = (0, rows - 16)  # rows - 16: its elements lie past 2**31
    grad_rows = [grad[first : first + 16].double() for first in firsts]
    del x, grad  # before any assertion (a failure's traceback would keep them alive)

    base64, weight64 = base.double(), weight.double()
    lse = base64.logsumexp(1)
    # loss_r = (1 - eps) w_t (lse - x_t) + (eps / C) sum_c w_c (lse - x_c), summed over rows, / sum_r w_t
    smooth_term = (weight64 * (lse[:, None] - base64)).sum(1) * smoothing / classes
    per_row = (1 - smoothing) * weight64[target] * (lse[row_kind] - base64[row_kind, target]) + smooth_term[row_kind]
    normalizer = weight64[target].sum()
    torch.testing.assert_close(loss.double(), per_row.sum() / normalizer, rtol=8e-3, atol=0)
    for first, got in zip(firsts, grad_rows):
        span = slice(first, first + 16)
        _, expected = _cross_entropy_reference(base64[row_kind[span]], target[span], weight64, smoothing)
        torch.testing.assert_close(got, expected / normalizer, rtol=2e-2, atol=1e-9)


@pytest.mark.slow
@needs_memory(15)  # input 4 GiB, gradient 4 GiB, max_logit and log_sum 2 GiB each
def test_cross_entropy_spatial_past_2_31_elements():
    batch, classes, spatial, smoothing = 2, 4, 2**28 + 5, 0.2
    assert batch * classes * spatial > 2**31
    generator = _generator()
    base = (torch.randn(batch, classes, 7, generator=generator) * 3).bfloat16()
    weight = (torch.rand(classes, generator=generator) + 0.5).bfloat16()
    # Position (n, s): logits base[n, :, s % 7], target (s % 5 + n) % C: 35 kinds of position per n.
    x = base.index_select(2, _periodic(7, spatial, torch.int32)).requires_grad_()  # (2, 4, 2**28 + 5), 4 GiB
    # uint8 targets: (2, 2**28 + 5) is 0.5 GiB (4 GiB as int64).
    target = torch.stack([(_periodic(5, spatial, torch.uint8) + n) % classes for n in range(batch)])
    loss = softmax_cross_entropy(x, target, weight, reduction="sum", label_smoothing=smoothing)
    (grad,) = torch.autograd.grad(loss, [x])
    firsts = (0, spatial - 35)  # the last positions of n = 1 lie past 2**31
    grad_positions = {(n, first): grad[n, :, first : first + 35].double().t() for n in range(batch) for first in firsts}
    del x, grad, target  # before any assertion (a failure's traceback would keep them alive)

    kind = torch.arange(35)
    counts = (spatial // 35 + (kind < spatial % 35)).double()
    expected_total = 0.0
    for n in range(batch):
        logits = base[n].double().t()[kind % 7]  # (35, C)
        kind_target = (kind % 5 + n) % classes
        per_kind, grad_kind = _cross_entropy_reference(logits, kind_target, weight.double(), smoothing)
        expected_total += float((counts * per_kind).sum())
        for first in firsts:
            span = torch.arange(first, first + 35)
            torch.testing.assert_close(grad_positions[n, first], grad_kind[span % 35], rtol=2e-2, atol=1e-9)
    torch.testing.assert_close(loss.double(), torch.tensor(expected_total, dtype=torch.float64), rtol=8e-3, atol=0)
