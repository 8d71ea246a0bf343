"""SoftmaxCrossEntropy against torch.nn.functional.cross_entropy (values, gradients, errors) and
gradcheck / gradgradcheck in float64."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import torch_manualbp
from torch_manualbp import SoftmaxCrossEntropyFunction, SoftmaxCrossEntropyLoss
from torch_manualbp.functional import softmax_cross_entropy

ops = torch.ops.torch_manualbp
REDUCTIONS = ["none", "mean", "sum"]
# Tolerance against torch in float32 (different summation orders, ATen's ~20 ulp exp). Reduced precision
# results are compared with a float32 reference computed from the same rounded values, to about twice
# their rounding error relative to the largest value of the tensor.
TOL = {torch.float32: dict(rtol=2e-5, atol=2e-6)}
REDUCED_RTOL = {torch.bfloat16: 8e-3, torch.float16: 1e-3}


def class_dim(shape):
    return 0 if len(shape) == 1 else 1


def make_case(shape, kind, dtype=torch.float64, weighted=False, ignored=True, generator=None):
    """Logits, target and weight for one case: index targets with one ignored position, or
    probability targets (rows not summing to 1, as torch allows)."""
    classes = shape[class_dim(shape)]
    positions = [s for d, s in enumerate(shape) if d != class_dim(shape)]
    x = torch.randn(shape, dtype=dtype, generator=generator) * 2
    if kind == "index":
        target = torch.randint(0, classes, positions, generator=generator)
        if ignored and target.numel() > 1:
            target.view(-1)[1] = -100
    else:
        target = torch.rand(shape, dtype=dtype, generator=generator)
    weight = torch.rand(classes, dtype=dtype, generator=generator) + 0.1 if weighted else None
    return x, target, weight


def grads(loss_fn, x, target, weight, grad_output=None, **kwargs):
    x = x.detach().clone().requires_grad_()
    target = target.detach().clone().requires_grad_(target.is_floating_point())
    loss = loss_fn(x, target, weight=weight, **kwargs)
    if grad_output is None:
        grad_output = torch.linspace(-1, 2, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    inputs = [x, target] if target.requires_grad else [x]
    return (loss.detach(),) + torch.autograd.grad(loss, inputs, grad_output)


def assert_matches_torch(x, target, weight, tol, **kwargs):
    ours = grads(softmax_cross_entropy, x, target, weight, **kwargs)
    ref = grads(F.cross_entropy, x, target, weight, **kwargs)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, equal_nan=True, **tol)


# ---- gradcheck over the option grid -----------------------------------------------------------------
GRID = list(itertools.product(REDUCTIONS, [0.0, 0.3], [False, True], ["index", "probability"]))


@pytest.mark.parametrize("shape", [(5,), (4, 6), (2, 3, 2, 2)], ids=str)
@pytest.mark.parametrize("reduction,smoothing,weighted,kind", GRID)
def test_gradcheck(shape, reduction, smoothing, weighted, kind):
    x, target, weight = make_case(shape, kind, weighted=weighted)
    x.requires_grad_()
    inputs = (x, target.requires_grad_()) if kind == "probability" else (x,)

    def fn(*args):
        t = args[1] if kind == "probability" else target
        return softmax_cross_entropy(args[0], t, weight, reduction=reduction, label_smoothing=smoothing)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind,shape", [("index", (3, 4)), ("index", (2, 3, 2)), ("probability", (2, 3)), ("probability", (2, 3, 2))])
def test_gradgradcheck(shape, kind, reduction):
    x, target, weight = make_case(shape, kind, weighted=True)
    x.requires_grad_()
    inputs = (x, target.requires_grad_()) if kind == "probability" else (x,)

    def fn(*args):
        t = args[1] if kind == "probability" else target
        return softmax_cross_entropy(args[0], t, weight, reduction=reduction, label_smoothing=0.2)

    assert torch.autograd.gradgradcheck(fn, inputs)


def test_gradgradcheck_without_weight_or_smoothing():
    x, target, _ = make_case((3, 5), "index")
    assert torch.autograd.gradgradcheck(lambda x: softmax_cross_entropy(x, target), (x.requires_grad_(),))


# ---- parity with F.cross_entropy --------------------------------------------------------------------
SHAPES = [(7,), (8, 5), (3, 4, 5), (2, 3, 4, 5), (2, 3, 2, 3, 2), (5, 3000), (3, 300, 5), (2, 21, 9, 7)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["index", "probability"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_float32_matches_torch(shape, kind, reduction):
    for smoothing, weighted in [(0.0, False), (0.15, True)]:
        x, target, weight = make_case(shape, kind, torch.float32, weighted)
        assert_matches_torch(x, target, weight, TOL[torch.float32], reduction=reduction, label_smoothing=smoothing)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(6, 40), (4, 2500), (2, 7, 3, 11)], ids=str)
@pytest.mark.parametrize("kind", ["index", "probability"])
def test_reduced_precision_accumulates_in_float32(dtype, shape, kind):
    """bfloat16/float16 logits: loss and gradients within rounding of a float32 computation on the
    same (rounded) values; max_logit and log_sum come back in float32."""
    x, target, weight = make_case(shape, kind, torch.float32, weighted=True)
    x, weight = x.to(dtype), weight.to(dtype)
    target = target.to(dtype) if kind == "probability" else target
    for reduction in REDUCTIONS:
        kwargs = dict(reduction=reduction, label_smoothing=0.1)
        ours = grads(softmax_cross_entropy, x, target, weight, **kwargs)
        ref = grads(F.cross_entropy, x.float(), target.float() if kind == "probability" else target, weight.float(), **kwargs)
        for a, b in zip(ours, ref):
            assert a.dtype == dtype
            rtol = REDUCED_RTOL[dtype]
            torch.testing.assert_close(a.float(), b, rtol=rtol, atol=rtol * float(b.abs().max()))
    _, max_logit, log_sum, _ = ops.softmax_cross_entropy_forward(x, target, weight, "mean", -100, 0.0)
    assert max_logit.dtype == log_sum.dtype == torch.float32
    torch.testing.assert_close(max_logit, x.float().amax(dim=1), rtol=0, atol=0)
    torch.testing.assert_close(log_sum, torch.logsumexp(x.float() - max_logit.unsqueeze(1), dim=1), rtol=1e-5, atol=1e-5)


def test_non_contiguous_inputs():
    base = torch.randn(6, 9, 10)
    x = base.transpose(1, 2)[:, :, ::2]  # (6, 10, 5), class stride 1 along a strided dim
    target = torch.randint(0, 10, (5, 6)).t()
    weight = torch.rand(20)[::2]
    assert not x.is_contiguous() and not target.is_contiguous() and not weight.is_contiguous()
    assert_matches_torch(x, target, weight, TOL[torch.float32], reduction="mean", label_smoothing=0.1)
    probs = torch.rand(5, 6, 10).permute(1, 2, 0)
    assert_matches_torch(x, probs, None, TOL[torch.float32], reduction="sum")


def test_long_rows_online_max_grows_across_blocks():
    """Rows longer than one block whose max grows from block to block (the running sum is rescaled), or
    jumps far above the reference the block's exponentials were taken against (they are redone)."""
    x = torch.linspace(-30, 30, 7000).repeat(5, 1) + torch.randn(5, 7000) * 0.1
    x[1] = x[1].flip(0)
    x[2, 5000:] = float("-inf")
    x[3, 100], x[3, 4000] = 80.0, 200.0  # maxima far above the first element and the running max
    x[3, :3000:7] = float("-inf")
    x[4, :2500] = float("-inf")  # a first block with nothing finite
    target = torch.tensor([6999, 3, 17, 100, 4000])
    for smoothing in (0.0, 0.2):
        assert_matches_torch(x.double(), target, None, dict(rtol=1e-12, atol=1e-12), reduction="none", label_smoothing=smoothing)
        assert_matches_torch(x, target, torch.rand(7000), TOL[torch.float32], reduction="none", label_smoothing=smoothing)
    probs = torch.rand(5, 7000, dtype=torch.float64)
    assert_matches_torch(x.double()[:2], probs[:2], None, dict(rtol=1e-12, atol=1e-12), reduction="none")


@pytest.mark.parametrize("kind", ["index", "probability"])
def test_spatial_positions_whose_first_class_is_masked_or_far_below_the_max(kind):
    """(N, C, H, W): exponentials are taken relative to class 0 unless it is -inf or far below the max."""
    x, target, weight = make_case((2, 6, 5, 3), kind, torch.float64, weighted=True)
    x[:, 0, 0, 0] = float("-inf")
    x[:, 0, 1, :] = -200.0
    x[1, 4, 2, 1] = 120.0
    for reduction in REDUCTIONS:
        for smoothing in (0.0, 0.3):
            assert_matches_torch(x, target, weight, dict(rtol=1e-12, atol=1e-12), reduction=reduction, label_smoothing=smoothing)


def test_uint8_targets_and_ignore_index_inside_the_class_range():
    x, target, weight = make_case((9, 6), "index", torch.float32, weighted=True, ignored=False)
    assert_matches_torch(x, target.to(torch.uint8), weight, TOL[torch.float32])
    assert_matches_torch(x, target.to(torch.uint8), None, TOL[torch.float32], label_smoothing=0.1)
    # (torch itself cannot combine uint8 targets, weights and smoothing: its gather wants int64.)
    torch.testing.assert_close(
        softmax_cross_entropy(x, target.to(torch.uint8), weight, label_smoothing=0.1),
        softmax_cross_entropy(x, target, weight, label_smoothing=0.1),
    )
    assert_matches_torch(x, target, weight, TOL[torch.float32], ignore_index=int(target[0]), label_smoothing=0.1)
    target[2] = -1
    assert_matches_torch(x, target, weight, TOL[torch.float32], ignore_index=-1, reduction="none")


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    ndim=st.integers(1, 4),
    kind=st.sampled_from(["index", "probability"]),
    reduction=st.sampled_from(REDUCTIONS),
    smoothing=st.sampled_from([0.0, 0.25, 1.0]),
    weighted=st.booleans(),
    transpose=st.booleans(),
)
def test_random_shapes_and_strides_match_torch(data, ndim, kind, reduction, smoothing, weighted, transpose):
    shape = tuple(data.draw(st.lists(st.integers(1, 7), min_size=ndim, max_size=ndim)))
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    x, target, weight = make_case(shape, kind, torch.float32, weighted, generator=generator)
    if transpose and ndim >= 3:  # the same values through a non-contiguous view
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert_matches_torch(x, target, weight, TOL[torch.float32], reduction=reduction, label_smoothing=smoothing)


# ---- autograd behaviour -----------------------------------------------------------------------------
def test_none_reduction_with_arbitrary_grad_output_and_scaled_loss():
    x, target, weight = make_case((5, 4, 3), "index", torch.float64, weighted=True)
    grad_output = torch.randn(5, 3, dtype=torch.float64)
    assert_matches_torch(x, target, weight, dict(rtol=1e-12, atol=1e-12), reduction="none", grad_output=grad_output)
    expanded = torch.tensor(3.0, dtype=torch.float64).expand(5, 3)  # zero strides, as loss.sum() * 3 gives
    assert_matches_torch(x, target, weight, dict(rtol=1e-12, atol=1e-12), reduction="none", grad_output=expanded)


def test_retain_graph_second_backward_and_inputs_unchanged():
    x, target, weight = make_case((6, 8), "probability", torch.float32, weighted=True)
    x.requires_grad_()
    target.requires_grad_()
    snapshot = [t.detach().clone() for t in (x, target, weight)]
    loss = softmax_cross_entropy(x, target, weight, label_smoothing=0.1) * 2.5
    loss.backward(retain_graph=True)
    first = (x.grad.clone(), target.grad.clone())
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * first[0])
    torch.testing.assert_close(target.grad, 2 * first[1])
    for before, after in zip(snapshot, (x, target, weight)):
        assert torch.equal(before, after.detach())
    ref_x = snapshot[0].clone().requires_grad_()
    (F.cross_entropy(ref_x, snapshot[1], snapshot[2], label_smoothing=0.1) * 2.5).backward()
    torch.testing.assert_close(first[0], ref_x.grad, **TOL[torch.float32])


def test_function_apply_returns_loss_max_logit_log_sum_and_normalizer():
    x, target, weight = make_case((6, 5, 2), "index", torch.float64, weighted=True)
    loss, max_logit, log_sum, normalizer = SoftmaxCrossEntropyFunction.apply(
        x.requires_grad_(), target, weight, "mean", -100, 0.0
    )
    torch.testing.assert_close(max_logit, x.detach().amax(dim=1), rtol=0, atol=0)
    torch.testing.assert_close(log_sum, torch.logsumexp(x.detach() - max_logit.unsqueeze(1), dim=1))
    torch.testing.assert_close(max_logit + log_sum, torch.logsumexp(x.detach(), dim=1))
    kept = target != -100
    torch.testing.assert_close(normalizer, weight[target[kept]].sum())
    assert not max_logit.requires_grad and not log_sum.requires_grad and loss.requires_grad


def test_weight_gradient_is_refused_as_torch_does_for_index_targets():
    x, target, weight = make_case((4, 3), "index", torch.float64, weighted=True)
    loss = softmax_cross_entropy(x.requires_grad_(), target, weight.requires_grad_())
    with pytest.raises(RuntimeError, match="derivative for 'weight' is not implemented"):
        loss.backward()


OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor")


def test_opcheck():
    cases = [make_case((4, 5), "index", weighted=True), make_case((2, 3, 4), "probability", weighted=False)]
    for x, target, weight in cases:
        x.requires_grad_()
        # (torch.compile of the ops is tested with the other layers' in the compile tests.)
        torch.library.opcheck(ops.softmax_cross_entropy_forward, (x, target, weight, "mean", -100, 0.1), test_utils=OPCHECK_UTILS)
        _, max_logit, log_sum, normalizer = ops.softmax_cross_entropy_forward(x.detach(), target, weight, "none", -100, 0.1)
        grad = torch.randn(max_logit.shape, dtype=x.dtype)
        torch.library.opcheck(
            ops.softmax_cross_entropy_backward,
            (grad, x.detach(), target, weight, max_logit, log_sum, normalizer, "none", -100, 0.1, [True, True]),
            test_utils=OPCHECK_UTILS,
        )


def test_deterministic_across_thread_counts():
    x, target, weight = make_case((1000, 37), "index", torch.float32, weighted=True)
    xs = torch.randn(4, 21, 30, 30)
    ts = torch.randint(0, 21, (4, 30, 30))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, threads if threads > 1 else 2):
            torch.set_num_threads(n)
            results.append((softmax_cross_entropy(x, target, weight, label_smoothing=0.1), softmax_cross_entropy(xs, ts)))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results))


# ---- numerics: large, infinite and NaN logits ------------------------------------------------------
def test_large_and_masked_logits():
    inf = float("inf")
    x = torch.tensor([[1e4, -1e4, 0.0, 5.0], [0.0, -inf, 1.0, -inf], [-1e4, -1e4 + 1, -inf, -1e4 + 2]])
    target = torch.tensor([1, 2, 0])
    for reduction in REDUCTIONS:
        ours = grads(softmax_cross_entropy, x, target, None, reduction=reduction)
        exact = grads(F.cross_entropy, x.double(), target, None, reduction=reduction)
        # The loss keeps full precision ((m - x_t) + log s); the gradient exp(x - lse) carries the
        # rounding of a float32 lse near 1e4 (ulp 1e-3), as torch's float32 log_softmax does.
        torch.testing.assert_close(ours[0].double(), exact[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ours[1].double(), exact[1], rtol=0, atol=1e-3)
    _, grad_x = grads(softmax_cross_entropy, x, target, None)
    assert grad_x[1, 1] == 0 and grad_x[1, 3] == 0 and grad_x[2, 2] == 0  # masked classes: exactly 0


def test_nan_and_infinity_propagate_as_in_torch():
    inf, nan = float("inf"), float("nan")
    x = torch.tensor([[0.0, -inf, 1.0], [nan, 0.0, 0.0], [inf, 0.0, 0.0], [-inf, -inf, -inf], [1.0, 2.0, 3.0]])
    for target, smoothing in [(torch.tensor([0, 1, -100, 0, 2]), 0.0), (torch.tensor([1, -100, 0, -100, 2]), 0.1)]:
        for reduction in REDUCTIONS:
            assert_matches_torch(x, target, None, TOL[torch.float32], reduction=reduction, label_smoothing=smoothing)
    spatial = x.t().unsqueeze(0).contiguous()  # the same positions in the (N, C, S) layout
    assert_matches_torch(spatial, torch.tensor([[0, 1, -100, 0, 2]]), None, TOL[torch.float32], reduction="none")
    probs = torch.rand(5, 3)
    assert_matches_torch(x, probs, None, TOL[torch.float32], reduction="none")


@pytest.mark.parametrize("shape", [(6, 4), (2, 4, 3)], ids=str)
def test_all_ignored_mean_is_nan_sum_is_zero(shape):
    x, target, weight = make_case(shape, "index", torch.float32, weighted=True)
    target.fill_(-100)
    for reduction in REDUCTIONS:
        for smoothing in (0.0, 0.2):
            assert_matches_torch(x, target, weight, TOL[torch.float32], reduction=reduction, label_smoothing=smoothing)
    assert torch.isnan(softmax_cross_entropy(x, target))
    assert softmax_cross_entropy(x, target, reduction="sum") == 0


def test_empty_inputs():
    for reduction in REDUCTIONS:
        for x, target in [(torch.randn(0, 5), torch.zeros(0, dtype=torch.long)), (torch.randn(0, 5), torch.rand(0, 5))]:
            assert_matches_torch(x, target, None, TOL[torch.float32], reduction=reduction)
    assert_matches_torch(torch.randn(3, 0), torch.rand(3, 0), None, TOL[torch.float32], reduction="mean")


# ---- the module -------------------------------------------------------------------------------------
def test_module_matches_cross_entropy_loss_and_moves_its_weight():
    weight = torch.rand(5) + 0.5
    kwargs = dict(weight=weight, ignore_index=2, reduction="sum", label_smoothing=0.05)
    ours, ref = SoftmaxCrossEntropyLoss(**kwargs), nn.CrossEntropyLoss(**kwargs)
    assert list(ours.state_dict()) == list(ref.state_dict()) == ["weight"]
    x, target, _ = make_case((7, 5, 3), "index", torch.float32, ignored=False)
    torch.testing.assert_close(ours(x, target), ref(x, target), **TOL[torch.float32])
    ours, ref = ours.to(torch.float64), ref.to(torch.float64)
    assert ours.weight.dtype == torch.float64
    torch.testing.assert_close(ours(x.double(), target), ref(x.double(), target), rtol=1e-12, atol=1e-12)
    assert "reduction='sum'" in repr(ours) and "ignore_index=2" in repr(ours) and "label_smoothing=0.05" in repr(ours)
    default = SoftmaxCrossEntropyLoss()
    assert (default.weight, default.ignore_index, default.reduction, default.label_smoothing) == (None, -100, "mean", 0.0)
    assert isinstance(torch_manualbp.SoftmaxCrossEntropyLoss(), nn.Module)


# ---- bad input --------------------------------------------------------------------------------------
X = torch.randn(4, 5)
T = torch.tensor([0, 1, 2, 3])
BAD_INPUTS = [
    ("reduction", dict(input=X, target=T, reduction="avg"), ValueError, "avg is not a valid value for reduction"),
    ("reduction None", dict(input=X, target=T, reduction=None), ValueError, "is not a valid value for reduction"),
    ("smoothing > 1", dict(input=X, target=T, label_smoothing=1.5), RuntimeError, "label_smoothing must be between 0.0 and 1.0. Got: 1.5"),
    ("smoothing < 0", dict(input=X, target=T, label_smoothing=-0.1), RuntimeError, "label_smoothing must be between 0.0 and 1.0"),
    ("class index too large", dict(input=X, target=torch.tensor([0, 1, 2, 5])), IndexError, "Target 5 is out of bounds."),
    ("class index negative", dict(input=X, target=torch.tensor([0, -1, 2, 3])), IndexError, "Target -1 is out of bounds."),
    ("spatial class index", dict(input=torch.randn(2, 5, 3), target=torch.full((2, 3), 7)), IndexError, "Target 7 is out of bounds."),
    ("smoothed class index", dict(input=X, target=torch.tensor([9, 1, 2, 3]), label_smoothing=0.1), IndexError, "Target 9 is out of bounds."),
    ("int32 target", dict(input=X, target=T.int()), RuntimeError, "expected target of dtype int64 or uint8"),
    ("float index target", dict(input=X, target=T.float()), RuntimeError, "but got target of dtype Float"),
    ("integer probabilities", dict(input=X, target=torch.zeros(4, 5, dtype=torch.long)), RuntimeError, "expected target (class probabilities: the input's shape) of a floating dtype"),
    ("probability dtype", dict(input=X, target=X.double()), RuntimeError, "expected target (class probabilities) to have the same dtype as input"),
    ("ignore_index with probabilities", dict(input=X, target=X.softmax(1), ignore_index=3), RuntimeError, "ignore_index is not supported for class-probability targets"),
    ("batch size", dict(input=X, target=T[:3]), ValueError, "expected input batch_size (4) to match target batch_size (3)"),
    ("target rank", dict(input=X, target=torch.zeros(4, 2, dtype=torch.long)), RuntimeError, "expected target of shape [4]"),
    ("spatial target shape", dict(input=torch.randn(2, 5, 3, 3), target=torch.zeros(2, 3, 4, dtype=torch.long)), RuntimeError, "expected target of shape [2, 3, 3]"),
    ("weight size", dict(input=X, target=T, weight=torch.ones(4)), RuntimeError, "expected weight of shape (C,) = (5,)"),
    ("weight rank", dict(input=X, target=T, weight=torch.ones(1, 5)), RuntimeError, "but got weight of shape [1, 5]"),
    ("weight dtype", dict(input=X, target=T, weight=torch.ones(5, dtype=torch.float64)), RuntimeError, "expected weight to have the same dtype as input"),
    ("integer logits", dict(input=torch.ones(4, 5, dtype=torch.long), target=T), TypeError, "expected input to be a floating-point tensor"),
    ("0-dim logits", dict(input=torch.tensor(1.0), target=torch.tensor(0)), RuntimeError, "expected input of shape (C,), (N, C) or (N, C, d1, ..., dK)"),
    ("target not a tensor", dict(input=X, target=[0, 1, 2, 3]), TypeError, "argument 'target' must be Tensor"),
    ("ignore_index type", dict(input=X, target=T, ignore_index=1.5), TypeError, "argument 'ignore_index' must be int"),
    ("smoothing type", dict(input=X, target=T, label_smoothing="0.1"), TypeError, "argument 'label_smoothing' must be float"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input(case):
    _, kwargs, error, fragment = case
    with pytest.raises(error) as info:
        softmax_cross_entropy(**kwargs)
    assert fragment in str(info.value)


def test_bad_backward_arguments_are_refused():
    x, target, _ = make_case((4, 5), "index", torch.float32)
    _, m, log_s, normalizer = ops.softmax_cross_entropy_forward(x, target, None, "none", -100, 0.0)
    backward = ops.softmax_cross_entropy_backward
    with pytest.raises(RuntimeError, match="expected grad_loss of shape"):
        backward(torch.ones(()), x, target, None, m, log_s, normalizer, "none", -100, 0.0, [True, False])
    with pytest.raises(RuntimeError, match="expected max_logit of dtype Float .*but got max_logit of dtype Double"):
        backward(torch.ones(4), x, target, None, m.double(), log_s, normalizer, "none", -100, 0.0, [True, False])
    with pytest.raises(RuntimeError, match="expected log_sum of dtype Float .*but got log_sum of dtype Double"):
        backward(torch.ones(4), x, target, None, m, log_s.double(), normalizer, "none", -100, 0.0, [True, False])
    with pytest.raises(RuntimeError, match=r"expected log_sum of shape \[4\], but got log_sum of shape \[5\]"):
        backward(torch.ones(4), x, target, None, m, torch.zeros(5), normalizer, "none", -100, 0.0, [True, False])
    with pytest.raises(IndexError, match="Target 7 is out of bounds."):
        backward(torch.ones(4), x, torch.tensor([0, 7, 1, 1]), None, m, log_s, normalizer, "none", -100, 0.0, [True, False])
