"""Extreme inputs: saturated sigmoids, NaN and infinities, values near the float maximum, empty batches,
a single output, a million outputs, and (marked slow) tensors past 2**31 elements."""
import pytest
import torch

from torch_manualbp.functional import linear_sigmoid

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
INF, NAN = float("inf"), float("nan")


def _mem_available_bytes():
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def needs_memory(gib):
    """Skip unless /proc/meminfo says that `gib` GiB are available (the only skip of this file)."""
    available = _mem_available_bytes() / 2**30
    return pytest.mark.skipif(available < gib, reason=f"needs {gib} GiB of free memory, {available:.1f} GiB available")


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


# ---- LinearSigmoid: past 2**31 elements ------------------------------------------------------------------
# x (rows, 1) takes 7 values, so every row of y (rows, 1024) and the full gradients are known in float64
# from 7 rows; rows = 2**21 + 3 puts the last rows' elements past 2**31 (64-bit indexing).
HUGE_ROWS, HUGE_OUT = 2**21 + 3, 1024


def _huge_x(dtype):
    return ((torch.arange(HUGE_ROWS) % 7 - 3) / 4).to(dtype)[:, None]


@pytest.mark.slow
@pytest.mark.parametrize(
    "dtype", [pytest.param(torch.bfloat16, marks=needs_memory(11)), pytest.param(torch.float32, marks=needs_memory(20))]
)
def test_linear_sigmoid_past_2_31_elements(dtype):
    assert HUGE_ROWS * HUGE_OUT > 2**31
    generator = torch.Generator().manual_seed(0)
    x = _huge_x(dtype).requires_grad_()
    weight = torch.randn(HUGE_OUT, 1, generator=generator).to(dtype).requires_grad_()
    bias = torch.randn(HUGE_OUT, generator=generator).to(dtype).requires_grad_()
    y = linear_sigmoid(x, weight, bias)
    # d(sum y)/dz arrives as a zero-stride tensor: no third huge buffer.
    grad_x, grad_weight, grad_bias = torch.autograd.grad(y.sum(), [x, weight, bias])

    # Reference in float64 from the 7 distinct rows, weighted by how often each occurs.
    values = torch.arange(-3, 4, dtype=torch.float64) / 4
    counts = torch.bincount(torch.arange(HUGE_ROWS) % 7, minlength=7).double()
    y_ref = torch.sigmoid(values[:, None] * weight.detach().double().t() + bias.detach().double())  # (7, out)
    dz_ref = y_ref * (1 - y_ref)
    tolerance = {torch.float32: 1e-6, torch.bfloat16: 8e-3}[dtype]
    for rows in (slice(0, 7), slice(2**21 - 7, 2**21), slice(HUGE_ROWS - 7, HUGE_ROWS)):  # the last rows lie past 2**31
        row_ids = torch.arange(rows.start, rows.stop) % 7
        torch.testing.assert_close(y[rows].detach().double(), y_ref[row_ids], rtol=0, atol=tolerance)
        torch.testing.assert_close(grad_x[rows].double(), (dz_ref @ weight.detach().double())[row_ids], rtol=tolerance * 8, atol=tolerance * 8)
    # Sums over 2**21 rows: their rounding error is relative to the sum of the terms' magnitudes. The weight
    # gradient is a GEMM over 2**21 rows (MKL sgemm loses ~3e-3 there, for native torch alike).
    bias_rtol, weight_rtol = {torch.float32: (1e-5, 1e-2), torch.bfloat16: (8e-3, 2e-2)}[dtype]
    for got, terms, rtol in (
        (grad_bias, counts[:, None] * dz_ref, bias_rtol),
        (grad_weight[:, 0], (counts * values)[:, None] * dz_ref, weight_rtol),
    ):
        error = (got.double() - terms.sum(0)).abs()
        assert (error <= rtol * terms.abs().sum(0)).all(), f"largest error {error.max().item()}"
