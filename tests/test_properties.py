"""Property-based parity with native PyTorch: random shapes (0-sized and size-1 dims, 1-D and N-d),
memory layouts (transposed, permuted, sliced, expanded), dtypes and options, values and gradients.

The number of examples comes from the hypothesis profile (tests/conftest.py); for a long search:
    TORCH_MANUALBP_HYPOTHESIS_PROFILE=long make test PYTEST_ARGS=test_properties.py
"""
import math

import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis_tensors import assert_close_to_bound, broadcast_shapes_to, leaf, sizes, tensors

from torch_manualbp.functional import linear_sigmoid

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _grads(output, inputs, grad_output):
    """d output / d inputs against grad_output, None where an input needs no gradient."""
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    if not wanted:
        return [None] * len(inputs)
    found = iter(torch.autograd.grad(output, wanted, grad_output))
    return [next(found) if t is not None and t.requires_grad else None for t in inputs]


# ---- LinearSigmoid ------------------------------------------------------------------------------------


@st.composite
def linear_sigmoid_cases(draw, dtypes=DTYPES):
    dtype = draw(st.sampled_from(dtypes))
    lead_dims = draw(st.integers(0, 3))  # 0: a 1-D input
    lead_cap = {0: 1, 1: 257, 2: 40, 3: 9}[lead_dims]
    lead = tuple(draw(st.lists(sizes(lead_cap), min_size=lead_dims, max_size=lead_dims)))
    in_features, out_features = draw(sizes(257)), draw(sizes(257))
    scale = draw(st.sampled_from([0.1, 1.0, 8.0]))  # 8: many saturated sigmoids
    x = draw(tensors((*lead, in_features), dtype, scale))
    weight = draw(tensors((out_features, in_features), dtype, scale))
    output_shape = (*lead, out_features)
    bias_shape = draw(st.none() | broadcast_shapes_to(output_shape))
    bias = None if bias_shape is None else draw(tensors(bias_shape, dtype, scale))
    grad_output = draw(tensors(output_shape, dtype))
    needs_grad = draw(st.tuples(st.booleans(), st.booleans(), st.booleans()))
    return x, weight, bias, grad_output, needs_grad


def _linear_sigmoid_bounds(x, weight, bias, grad_output):
    """Float64 magnitude bounds (see assert_close_to_bound) of y, dx, dW and db."""
    x_abs, w_abs = x.detach().double().abs(), weight.detach().double().abs()
    z_bound = x_abs @ w_abs.t()
    if bias is not None:
        z_bound = z_bound + bias.detach().double().abs()
    # dz = dy * y (1 - y): its error follows y's (sigmoid' <= 1/4 of z's error) times |dy|.
    dz_bound = grad_output.double().abs() * (1.0 + 0.25 * z_bound)
    rows = math.prod(x.shape[:-1])
    return {
        "y": 0.25 * z_bound,
        "x": dz_bound @ w_abs,
        "weight": dz_bound.reshape(rows, weight.shape[0]).t() @ x_abs.reshape(rows, weight.shape[1]),
        "bias": None if bias is None else dz_bound.sum_to_size(bias.shape),
    }


@given(linear_sigmoid_cases())
def test_linear_sigmoid_matches_native(case):
    x, weight, bias, grad_output, needs_grad = case
    before = [t.clone() for t in (x, weight, grad_output) + ((bias,) if bias is not None else ())]
    ours_in = [leaf(t, need) for t, need in zip((x, weight, bias), needs_grad)]
    native_in = [leaf(t, need) for t, need in zip((x, weight, bias), needs_grad)]

    ours = linear_sigmoid(*ours_in)
    native_z = native_in[0] @ native_in[1].t()
    native = torch.sigmoid(native_z if bias is None else native_z + native_in[2])

    bounds = _linear_sigmoid_bounds(x, weight, bias, grad_output)
    assert ours.shape == native.shape and ours.dtype == native.dtype
    assert_close_to_bound(ours, native, bounds["y"], x.dtype)
    ours_grads = _grads(ours, ours_in, grad_output)
    native_grads = _grads(native, native_in, grad_output)
    for name, got, expected in zip(("x", "weight", "bias"), ours_grads, native_grads):
        assert (got is None) == (expected is None), name
        if got is not None:
            assert_close_to_bound(got, expected, bounds[name].reshape(expected.shape), x.dtype)
    after = (x, weight, grad_output) + ((bias,) if bias is not None else ())
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "an input was modified"


@given(linear_sigmoid_cases(dtypes=(torch.float64,)))
def test_linear_sigmoid_double_backward_matches_native(case):
    x, weight, bias, grad_output, _ = case
    ours_in = [leaf(t, True) for t in (x, weight, bias, grad_output)]
    native_in = [leaf(t, True) for t in (x, weight, bias, grad_output)]
    ours = linear_sigmoid(*ours_in[:3])
    native_z = native_in[0] @ native_in[1].t()
    native = torch.sigmoid(native_z if bias is None else native_z + native_in[2])

    results = []
    for y, (xi, wi, bi, gi) in ((ours, ours_in), (native, native_in)):
        first = torch.autograd.grad(y, [t for t in (xi, wi, bi) if t is not None], gi, create_graph=True)
        # A fixed random direction for each first derivative, then its derivative w.r.t. everything.
        directions = [torch.randn(g.shape, generator=torch.Generator().manual_seed(i), dtype=g.dtype) for i, g in enumerate(first)]
        scalar = sum((g * d).sum() for g, d in zip(first, directions))
        leaves = [t for t in (xi, wi, bi, gi) if t is not None]
        results.append(torch.autograd.grad(scalar, leaves, allow_unused=True, materialize_grads=True))
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
