"""Property-based parity with native PyTorch: random shapes (0-sized and size-1 dims, 1-D and N-d),
memory layouts (transposed, permuted, sliced, expanded), dtypes and options, values and gradients.

The number of examples comes from the hypothesis profile (tests/conftest.py); for a long search:
    TORCH_MANUALBP_HYPOTHESIS_PROFILE=long make test PYTEST_ARGS=test_properties.py
"""
import math

import torch
import torch.nn.functional as F
from hypothesis import assume, example, given
from hypothesis import strategies as st
from hypothesis_tensors import assert_close_to_bound, broadcast_shapes_to, leaf, randn, sizes, tensors

from torch_manualbp.functional import linear_sigmoid, softmax_cross_entropy

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


def _linear_sigmoid_example(lead, in_features, out_features, dtype, bias):
    """A fixed case at the kernels' block edges (tests/test_blocking_edges.py has more), every gradient wanted."""
    bias_tensor = randn((out_features,), dtype, seed=3) if bias else None
    return (randn((*lead, in_features), dtype, seed=1), randn((out_features, in_features), dtype, seed=2),
            bias_tensor, randn((*lead, out_features), dtype, seed=4), (True, True, True))


@given(linear_sigmoid_cases())
# Past one 256-element bfloat16/float16 chunk, across several 32-row blocks of the bias gradient.
@example(_linear_sigmoid_example((65,), 7, 257, torch.bfloat16, True))
@example(_linear_sigmoid_example((2, 33), 5, 300, torch.float16, True))
@example(_linear_sigmoid_example((97,), 3, 255, torch.bfloat16, False))
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


# ---- SoftmaxCrossEntropy -------------------------------------------------------------------------------


def _class_indices(classes, ignore_index, ignored_fraction):
    def values(shape, generator):
        indices = torch.randint(0, classes, shape, generator=generator)
        return torch.where(torch.rand(shape, generator=generator) < ignored_fraction, ignore_index, indices)

    return values


def _positive(shape, generator):
    return torch.rand(shape, generator=generator, dtype=torch.float64) + 0.05


def _uniform(shape, generator):  # probability targets: rows need not sum to 1
    return torch.rand(shape, generator=generator, dtype=torch.float64)


@st.composite
def cross_entropy_cases(draw, dtypes=DTYPES):
    dtype = draw(st.sampled_from(dtypes))
    spatial_dims = draw(st.integers(-1, 2))  # -1: a 1-D input (C,); 0: (N, C); k: (N, C, d1, ..., dk)
    classes = draw(sizes(257).filter(lambda c: c >= 1))  # no classes at all: test_extreme.py
    if spatial_dims < 0:
        shape = (classes,)
    else:
        batch = draw(sizes(65 if spatial_dims == 0 else 9))
        shape = (batch, classes, *draw(st.lists(sizes(9), min_size=spatial_dims, max_size=spatial_dims)))
    class_dim = 0 if len(shape) == 1 else 1
    positions = shape[:class_dim] + shape[class_dim + 1 :]
    x = draw(tensors(shape, dtype, scale=draw(st.sampled_from([1.0, 10.0, 100.0]))))
    kind = draw(st.sampled_from(["index", "probability"]))
    ignore_index = -100
    if kind == "index":
        index_dtype = draw(st.sampled_from([torch.int64, torch.uint8])) if classes < 255 else torch.int64
        ignore_index = draw(st.sampled_from([-100, -1, classes - 1]))
        ignored_fraction = draw(st.sampled_from([0.0, 0.3, 1.0])) if ignore_index >= 0 or index_dtype == torch.int64 else 0.0
        target = draw(tensors(positions, index_dtype, values=_class_indices(classes, ignore_index, ignored_fraction)))
    else:
        target = draw(tensors(shape, dtype, values=_uniform))
    weight = draw(st.none() | tensors((classes,), dtype, values=_positive))
    reduction = draw(st.sampled_from(["none", "mean", "sum"]))
    smoothing = draw(st.sampled_from([0.0, 0.1, 1.0]) | st.floats(0.0, 1.0))
    loss_shape = positions if reduction == "none" else ()
    grad_output = draw(tensors(loss_shape, dtype))
    target_grad = kind == "probability" and draw(st.booleans())
    options = dict(weight=weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing)
    return x, target, options, grad_output, target_grad


def _cross_entropy_bounds(x, target, options, grad_output):
    """Float64 magnitude bounds (see assert_close_to_bound) of the loss, grad_input and grad_target,
    from loss_i = sum_c a_ic (lse_i - x_ic) (the derivation in csrc/softmax_cross_entropy.cpp)."""
    class_dim = 0 if x.dim() == 1 else 1
    xm = x.detach().double().movedim(class_dim, -1)  # (..., C)
    classes, eps = xm.shape[-1], options["label_smoothing"]
    w = torch.ones(classes, dtype=torch.float64) if options["weight"] is None else options["weight"].double()
    lse = xm.logsumexp(-1, keepdim=True)
    if target.is_floating_point():
        a = w * ((1 - eps) * target.detach().double().movedim(class_dim, -1) + eps / classes)
        normalizer = float(xm[..., 0].numel())
    else:
        t = target.long()
        kept = t != options["ignore_index"]
        one_hot = F.one_hot(torch.where(kept, t, 0), classes).double()
        a = w * ((1 - eps) * one_hot + eps / classes) * kept[..., None]
        normalizer = float((w[torch.where(kept, t, 0)] * kept).sum())
    magnitude = xm.abs() + lse.abs()
    loss = (a.abs() * magnitude).sum(-1)
    g = grad_output.double().abs()
    if options["reduction"] != "none":
        loss = loss.sum()
        if options["reduction"] == "mean":
            loss, g = loss / normalizer, g / normalizer
        g = g.expand(lse.shape[:-1])
    g = g[..., None]
    y = torch.softmax(xm, -1)
    grad_input = g * (y * a.sum(-1, keepdim=True).abs() * (1 + magnitude) + a.abs())
    grad_target = g * (1 - eps) * w * magnitude
    return {"loss": loss, "input": grad_input.movedim(-1, class_dim), "target": grad_target.movedim(-1, class_dim)}


def _native_cross_entropy(input, target, **options):
    return F.cross_entropy(input, target if target.is_floating_point() else target.long(), **options)


def _upcast(t):
    """float32 for bfloat16/float16 (the accumulation type of our kernels; torch's own float16 cross-entropy
    overflows where float32 does not: 31 smoothed classes of logits ~200 sum past 65504)."""
    return t.float() if t is not None and t.dtype in (torch.bfloat16, torch.float16) else t


def _cross_entropy_example(shape, dtype, target_kind, reduction, weighted, smoothing):
    """A fixed case at the kernels' block edges (tests/test_blocking_edges.py has more)."""
    x = randn(shape, dtype, seed=1, scale=3.0)
    positions = shape[:1] + shape[2:]
    generator = torch.Generator().manual_seed(2)
    if target_kind == "probability":
        target = torch.rand(shape, generator=generator, dtype=torch.float64).to(dtype)
    else:
        target = torch.randint(0, shape[1], positions, generator=generator).to(target_kind)
    weight = _positive((shape[1],), generator).to(dtype) if weighted else None
    options = dict(weight=weight, ignore_index=-100, reduction=reduction, label_smoothing=smoothing)
    grad_output = randn(positions if reduction == "none" else (), dtype, seed=3)
    return x, target, options, grad_output, target_kind == "probability"


@given(cross_entropy_cases())
# Rows past one block of 2048 classes; spatial positions past one chunk of spatial_lanes(C) (C = 21: 192).
@example(_cross_entropy_example((3, 2049), torch.bfloat16, torch.int64, "mean", True, 0.1))
@example(_cross_entropy_example((17, 4097), torch.float32, "probability", "none", False, 0.0))
@example(_cross_entropy_example((2, 21, 193), torch.bfloat16, "probability", "none", True, 0.2))
@example(_cross_entropy_example((2, 5, 257), torch.float32, torch.uint8, "sum", False, 0.1))
def test_softmax_cross_entropy_matches_native(case):
    x, target, options, grad_output, target_grad = case
    inputs = [x, target] + ([options["weight"]] if options["weight"] is not None else [])
    before = [t.clone() for t in inputs + [grad_output]]

    leaves = [leaf(x, True), leaf(target, target_grad)]
    ours = softmax_cross_entropy(*leaves, **options)
    ours_grads = _grads(ours, leaves, grad_output)
    # Native torch on the same values, in float32 for reduced precision, rounded to the dtype at the end.
    leaves = [leaf(_upcast(x), True), leaf(_upcast(target), target_grad)]
    native = _native_cross_entropy(*leaves, **dict(options, weight=_upcast(options["weight"])))
    native_grads = [None if g is None else g.to(x.dtype) for g in _grads(native, leaves, _upcast(grad_output))]
    native = native.detach().to(x.dtype)

    bounds = _cross_entropy_bounds(x, target, options, grad_output)
    assert ours.shape == native.shape and ours.dtype == native.dtype
    assert_close_to_bound(ours, native, bounds["loss"], x.dtype)
    for name, got, expected in zip(("input", "target"), ours_grads, native_grads):
        assert (got is None) == (expected is None), name
        if got is not None:
            assert_close_to_bound(got, expected, bounds[name], x.dtype)
    assert all(torch.equal(a, b) for a, b in zip(before, inputs + [grad_output])), "an input was modified"


@given(cross_entropy_cases(dtypes=(torch.float64,)))
def test_softmax_cross_entropy_double_backward_matches_native(case):
    x, target, options, grad_output, _ = case
    # 'mean' over nothing (no position, or all ignored) divides by 0: torch's double backward gives NaN
    # even for derivatives that are sums over no element (0); first derivatives are compared above.
    if options["reduction"] == "mean":
        kept = target.is_floating_point() or (target.long() != options["ignore_index"]).any()
        assume(x.numel() > 0 and kept)
    target_grad = target.is_floating_point()
    results = []
    for fn in (softmax_cross_entropy, _native_cross_entropy):
        leaves = [leaf(x, True), leaf(target, target_grad), leaf(grad_output, True)]
        loss = fn(*leaves[:2], **options)
        differentiable = [t for t in leaves[:2] if t.requires_grad]
        first = torch.autograd.grad(loss, differentiable, leaves[2], create_graph=True)
        directions = [torch.randn(g.shape, generator=torch.Generator().manual_seed(i), dtype=g.dtype) for i, g in enumerate(first)]
        scalar = sum((g * d).sum() for g, d in zip(first, directions))
        wrt = [t for t in leaves if t.requires_grad]
        results.append(torch.autograd.grad(scalar, wrt, allow_unused=True, materialize_grads=True))
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-7, equal_nan=True)
