"""Hypothesis strategies and tolerances shared by the robustness tests (test_properties.py, ...).

A drawn tensor has random values (from a drawn seed, so that a failing example replays) and a drawn
memory layout: contiguous, transposed, permuted, sliced (every other element of a buffer whose gaps hold
NaN, or the smallest integer for class indices, so that a kernel reading outside the view produces NaN
or an index error), or expanded (zero strides; then the values
repeat along the expanded dims). Layouts other than "expanded" keep the values: only strides change.
"""

import torch
from hypothesis import strategies as st

LAYOUTS = ("contiguous", "transposed", "permuted", "sliced", "expanded")

# Sizes that cross the kernels' edges: 0 and 1, SIMD widths (4/8/16 lanes) +-1, the backward's
# 32-row bias blocks, the 256-element bfloat16 conversion chunks.
EDGE_SIZES = (0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 65, 257)


def sizes(max_size=40):
    """A dim size: mostly small, often an edge of the kernels."""
    return st.one_of(st.integers(0, min(6, max_size)), st.sampled_from([s for s in EDGE_SIZES if s <= max_size]))


def generator(seed):
    return torch.Generator().manual_seed(seed)


def randn(shape, dtype, seed, scale=1.0):
    """Normal values, drawn in float64 and rounded once to `dtype`."""
    return (torch.randn(shape, generator=generator(seed), dtype=torch.float64) * scale).to(dtype)


def _gap_value(dtype):
    """What fills the gaps of a sliced view: NaN, or for integers (class indices) an invalid index."""
    if dtype.is_floating_point:
        return float("nan")
    return torch.iinfo(dtype).max if dtype == torch.uint8 else torch.iinfo(dtype).min


def with_layout(values, layout, seed):
    """`values` with the memory layout `layout` (see the module docstring); its values are kept
    except for "expanded", where the dims chosen from `seed` are read from index 0 only."""
    shape = tuple(values.shape)
    if layout == "contiguous" or values.dim() == 0:
        return values.contiguous()
    if layout == "transposed":
        if values.dim() < 2:
            return with_layout(values, "sliced", seed)
        return values.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "permuted":
        order = torch.randperm(values.dim(), generator=generator(seed)).tolist()
        inverse = [order.index(d) for d in range(values.dim())]
        return values.permute(order).contiguous().permute(inverse)
    if layout == "sliced":
        buffer = torch.full((*shape[:-1], 2 * shape[-1] + 1), _gap_value(values.dtype), dtype=values.dtype)
        view = buffer[..., 1::2]
        view.copy_(values)
        return view
    if layout == "expanded":
        chosen = torch.rand(values.dim(), generator=generator(seed)) < 0.5
        base = values[tuple(slice(0, 1) if c else slice(None) for c in chosen.tolist())]
        return base.contiguous().expand(shape)
    raise ValueError(layout)


@st.composite
def tensors(draw, shape, dtype, scale=1.0, layouts=LAYOUTS, values=None):
    """A tensor of `shape` with a drawn layout and random values: normal times `scale`, or
    values(shape, generator) (e.g. class indices, or positive weights) converted to `dtype`."""
    seed = draw(st.integers(0, 2**31 - 1))
    layout = draw(st.sampled_from(layouts))
    if values is None:
        data = randn(shape, dtype, seed, scale)
    else:
        data = values(shape, generator(seed)).to(dtype)
    return with_layout(data, layout, seed)


def broadcast_shapes_to(shape):
    """A shape that broadcasts to `shape` without growing it: some trailing dims of `shape`,
    each kept or replaced by 1."""
    return st.integers(0, len(shape)).flatmap(
        lambda rank: st.tuples(*[st.sampled_from(sorted({1, size})) for size in shape[len(shape) - rank :]])
    )


# Unit roundoff of each dtype: the scale of the tolerances below.
EPS = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.bfloat16: 2.0**-8,
    torch.float16: 2.0**-11,
}


def assert_close_to_bound(actual, expected, bound, dtype, factor=16.0):
    """|actual - expected| <= factor * eps(dtype) * (bound + 1), elementwise.

    `bound` is a float64 bound of the magnitudes the computation sums (for a product A @ B it is
    |A| @ |B|): a rounding error of a sum is relative to the sum of its terms' magnitudes, not to the
    result, which can cancel to 0. Both tensors are compared in float64; NaNs must match in place.
    """
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    actual64, expected64 = actual.detach().double(), expected.detach().double()
    nan_actual, nan_expected = actual64.isnan(), expected64.isnan()
    assert torch.equal(nan_actual, nan_expected), "NaN in different places"
    finite = ~nan_actual
    same_inf = actual64 == expected64  # equal infinities (and equal finite values)
    tolerance = factor * EPS[dtype] * (bound.double().expand(actual.shape) + 1.0)
    error = (actual64 - expected64).abs()
    bad = finite & ~same_inf & ~(error <= tolerance)
    if bad.any():
        where = bad.nonzero()[0].tolist()
        raise AssertionError(
            f"{int(bad.sum())} of {actual.numel()} elements differ beyond tolerance; first at {where}: "
            f"actual {actual64[tuple(where)].item()!r}, expected {expected64[tuple(where)].item()!r}, "
            f"tolerance {tolerance[tuple(where)].item():.3g}"
        )


def leaf(t, requires_grad):
    """A new leaf that shares `t`'s storage and strides (zero strides included); None stays None."""
    return None if t is None else t.detach().requires_grad_(requires_grad)
