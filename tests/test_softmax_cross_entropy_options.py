"""SoftmaxCrossEntropy's softcap and z-loss (lse_square_scale) against a float64 composite written here:
F.cross_entropy of the softcapped logits plus lambda * logsumexp^2 per non-ignored position. Values and
gradients over the option grid (rows and spatial layouts, index and probability targets, every reduction,
class weights, label smoothing, ignore_index), gradcheck / gradgradcheck / forward-mode AD in float64,
bfloat16 and float16 against torch's own composite, non-finite logits, bad options, the module, torch.func
and torch.compile."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from torch_manualbp import SoftmaxCrossEntropyFunction, SoftmaxCrossEntropyLoss
from torch_manualbp.functional import softmax_cross_entropy

ops = torch.ops.torch_manualbp
REDUCTIONS = ["none", "mean", "sum"]


def reference(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
              lse_square_scale=0.0, softcap=None):
    """The composite, in the dtype of its arguments: the softcap s * tanh(x / s), F.cross_entropy, and the
    z-loss lse_square_scale * logsumexp^2 per non-ignored position ('mean': over their number)."""
    class_dim = 0 if input.dim() == 1 else 1
    logits = input if softcap is None else softcap * torch.tanh(input / softcap)
    loss = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)
    if not lse_square_scale:
        return loss
    if target.shape == input.shape:
        kept = torch.ones(logits.sum(class_dim).shape, dtype=torch.bool, device=input.device)
    else:
        kept = target.long() != ignore_index
    z_loss = lse_square_scale * torch.logsumexp(logits, class_dim).square() * kept
    if reduction == "none":
        return loss + z_loss
    if reduction == "sum":
        return loss + z_loss.sum()
    return loss + z_loss.sum() / kept.sum()


def make_case(shape, kind, dtype=torch.float64, weighted=False, ignored=True, seed=0):
    """Logits (spread so that the softcap bends them), target (index targets with one ignored position, or
    unnormalised probabilities) and class weights."""
    g = torch.Generator().manual_seed(seed)
    class_dim = 0 if len(shape) == 1 else 1
    classes = shape[class_dim]
    positions = [s for d, s in enumerate(shape) if d != class_dim]
    x = (torch.randn(shape, dtype=torch.float64, generator=g) * 3).to(dtype)
    if kind == "index":
        target = torch.randint(0, classes, positions, generator=g)
        if ignored and target.numel() > 1:
            target.view(-1)[1] = -100
    else:
        target = torch.rand(shape, dtype=torch.float64, generator=g).to(dtype)
    weight = (torch.rand(classes, dtype=torch.float64, generator=g) + 0.2).to(dtype) if weighted else None
    return x, target, weight


def loss_and_grads(fn, x, target, grad_output=None, **kwargs):
    """fn's loss and the gradients of the input (and of probability targets) for a fixed upstream pattern."""
    x = x.detach().clone().requires_grad_()
    target = target.detach().clone().requires_grad_(target.is_floating_point())
    loss = fn(x, target, **kwargs)
    if grad_output is None:
        grad_output = torch.linspace(-1, 2, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    inputs = [x, target] if target.requires_grad else [x]
    return (loss.detach(),) + torch.autograd.grad(loss, inputs, grad_output)


def assert_matches_reference(x, target, tol=dict(rtol=1e-9, atol=1e-11), **kwargs):
    ours = loss_and_grads(softmax_cross_entropy, x, target, **kwargs)
    ref = loss_and_grads(reference, x, target, **kwargs)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, equal_nan=True, **tol)


# ---- values and gradients over the option grid (float64) -------------------------------------------
SHAPES = [(7,), (6, 5), (3, 5, 4), (2, 4, 3, 2)]
OPTION_GRID = list(itertools.product([0.0, 0.2], [False, True], [None, 1.5], [0.0, 0.05]))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["index", "probability"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_composite_over_option_grid(shape, kind, reduction):
    for smoothing, weighted, softcap, z_loss in OPTION_GRID:
        x, target, weight = make_case(shape, kind, weighted=weighted)
        assert_matches_reference(x, target, weight=weight, reduction=reduction, label_smoothing=smoothing,
                                 softcap=softcap, lse_square_scale=z_loss)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ignore_index_inside_the_class_range_and_uint8_targets(reduction):
    """The z-loss counts exactly the positions whose target is not ignore_index; uint8 class indices up to
    255 are never mistaken for a negative ignore_index (-100 wraps to 156 in uint8)."""
    x, target, weight = make_case((9, 200), "index", weighted=True, ignored=False)
    target[::3] = 156
    options = dict(weight=weight, reduction=reduction, label_smoothing=0.1, softcap=2.0, lse_square_scale=0.1)
    assert_matches_reference(x, target, ignore_index=int(target[1]), **options)
    ours = loss_and_grads(softmax_cross_entropy, x, target.to(torch.uint8), **options)
    ref = loss_and_grads(reference, x, target, **options)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("shape", [(5, 7000), (3, 300, 5), (2, 21, 9, 7)], ids=str)
@pytest.mark.parametrize("kind", ["index", "probability"])
def test_float32_long_rows_and_wide_spatial(shape, kind):
    """Rows longer than one block of the online logsumexp, and spatial chunks with many classes, in float32
    against the float64 composite."""
    x, target, weight = make_case(shape, kind, weighted=True)
    options = dict(weight=weight, label_smoothing=0.1, softcap=4.0, lse_square_scale=1e-3)
    for reduction in REDUCTIONS:
        ours = loss_and_grads(softmax_cross_entropy, x.float(), target.float() if kind == "probability" else target,
                              **{**options, "weight": weight.float()}, reduction=reduction)
        ref = loss_and_grads(reference, x, target, **options, reduction=reduction)
        for a, r in zip(ours, ref):
            torch.testing.assert_close(a.double(), r, rtol=2e-5, atol=2e-6)


def test_each_option_alone_changes_the_loss_as_its_formula_says():
    """Hand-checked meaning of each option: the z-loss adds lambda * lse^2 ('mean': its mean over the kept
    positions), the softcap is the cross-entropy of s * tanh(x / s)."""
    x = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0], [2.0, 2.0, -3.0]], dtype=torch.float64)
    target = torch.tensor([2, -100, 0])
    plain = softmax_cross_entropy(x, target)
    lse = torch.logsumexp(x, 1)
    z = softmax_cross_entropy(x, target, lse_square_scale=0.5)
    torch.testing.assert_close(z, plain + 0.5 * (lse[0] ** 2 + lse[2] ** 2) / 2)
    capped = softmax_cross_entropy(x, target, softcap=2.0, reduction="none")
    squashed = 2.0 * torch.tanh(x / 2.0)
    expected = torch.logsumexp(squashed, 1) - squashed[[0, 1, 2], [2, 0, 0]]
    torch.testing.assert_close(capped, expected * torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))


def test_defaults_are_the_plain_loss_bit_for_bit():
    x, target, weight = make_case((40, 33), "index", torch.float32, weighted=True)
    for reduction in REDUCTIONS:
        plain = loss_and_grads(softmax_cross_entropy, x, target, weight=weight, reduction=reduction)
        explicit = loss_and_grads(softmax_cross_entropy, x, target, weight=weight, reduction=reduction,
                                  lse_square_scale=0.0, softcap=None)
        for a, b in zip(plain, explicit):
            assert torch.equal(a, b)


# ---- gradcheck, gradgradcheck and forward-mode AD (float64) ----------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind,shape", [("index", (5,)), ("index", (3, 4)), ("index", (2, 3, 2)),
                                        ("probability", (3, 4)), ("probability", (2, 3, 2))], ids=str)
@pytest.mark.parametrize("options", [dict(softcap=1.5), dict(lse_square_scale=0.1),
                                     dict(softcap=2.0, lse_square_scale=0.1, label_smoothing=0.2)],
                         ids=["softcap", "z-loss", "all"])
def test_gradcheck_gradgradcheck_and_forward_ad(kind, shape, reduction, options):
    """The first derivatives (backward and jvp) and the derivatives of the backward (its backward and its
    tangents: check_fwd_over_rev) against finite differences."""
    x, target, weight = make_case(shape, kind, weighted=True)
    x.requires_grad_()
    inputs = (x, target.requires_grad_()) if kind == "probability" else (x,)

    def fn(*args):
        t = args[1] if kind == "probability" else target
        return softmax_cross_entropy(args[0], t, weight, reduction=reduction, **options)

    assert torch.autograd.gradcheck(fn, inputs, check_forward_ad=True, check_batched_grad=True)
    assert torch.autograd.gradgradcheck(fn, inputs, check_fwd_over_rev=True)


@pytest.mark.parametrize("kind", ["index", "probability"])
def test_hessian_vector_products_match_the_composite(kind):
    x, target, weight = make_case((4, 6), kind, weighted=True)
    options = dict(weight=weight, label_smoothing=0.1, softcap=2.5, lse_square_scale=0.2)
    v = torch.randn_like(x)
    results = []
    for fn in (softmax_cross_entropy, reference):
        grad = torch.func.grad(lambda x: fn(x, target, **options))
        results.append(torch.func.jvp(grad, (x,), (v,))[1])  # forward over reverse
        results.append(torch.func.vjp(grad, x)[1](v)[0])  # reverse over reverse
    torch.testing.assert_close(results[0], results[2], rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(results[1], results[3], rtol=1e-9, atol=1e-11)


def test_vmap_per_sample_losses_and_gradients():
    """torch.vmap: 'none' folds the samples into the positions, 'mean' runs per sample (each sample its own
    z-loss normalizer); per-sample gradients through vmap(grad)."""
    x, target, weight = make_case((12, 6), "index", weighted=True)
    x, target = x.view(3, 4, 6), target.view(3, 4)  # 3 samples of 4 positions, one of them ignored
    options = dict(weight=weight, softcap=2.0, lse_square_scale=0.1, label_smoothing=0.1)
    for reduction in REDUCTIONS:
        ours = torch.func.vmap(lambda x, t: softmax_cross_entropy(x, t, reduction=reduction, **options))(x, target)
        ref = torch.stack([reference(x[i], target[i], reduction=reduction, **options) for i in range(3)])
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-11)
    per_sample = torch.func.vmap(torch.func.grad(lambda x, t: softmax_cross_entropy(x, t, **options)))(x, target)
    ref = torch.stack([torch.func.grad(lambda x: reference(x, target[i], **options))(x[i]) for i in range(3)])
    torch.testing.assert_close(per_sample, ref, rtol=1e-9, atol=1e-11)


def test_compiles_without_graph_breaks():
    x, target, weight = make_case((6, 5, 3), "index", torch.float32, weighted=True)
    options = dict(weight=weight, softcap=2.0, lse_square_scale=0.05, label_smoothing=0.1)
    compiled = torch.compile(lambda x, t: softmax_cross_entropy(x, t, **options), fullgraph=True, backend="aot_eager")
    ours = loss_and_grads(compiled, x, target)
    eager = loss_and_grads(lambda x, t: softmax_cross_entropy(x, t, **options), x, target)
    for a, b in zip(ours, eager):
        torch.testing.assert_close(a, b)


def test_function_apply_takes_the_options_in_the_ops_order():
    x, target, weight = make_case((6, 5), "index", weighted=True)
    loss, max_logit, log_sum, normalizer = SoftmaxCrossEntropyFunction.apply(
        x.requires_grad_(), target, weight, "mean", -100, 0.0, 0.1, 2.0
    )
    capped = 2.0 * torch.tanh(x.detach() / 2.0)
    torch.testing.assert_close(max_logit, capped.amax(1), rtol=0, atol=1e-15)
    torch.testing.assert_close(max_logit + log_sum, torch.logsumexp(capped, 1))
    kept = target != -100
    torch.testing.assert_close(normalizer, weight[target[kept]].sum())  # the cross-entropy's, as without options
    torch.testing.assert_close(loss, reference(x.detach(), target, weight, lse_square_scale=0.1, softcap=2.0))


# ---- reduced precision -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(64, 3000), (4, 30, 8, 9)], ids=str)
@pytest.mark.parametrize("kind", ["index", "probability"])
def test_reduced_precision_no_less_accurate_than_torchs_composite(dtype, shape, kind):
    """Loss and gradients from bfloat16/float16 inputs no further from the float64 value than twice torch's
    own composite in that dtype (plus one unit of the dtype's resolution)."""
    x, target, weight = make_case(shape, kind, weighted=True)
    x, weight = x.to(dtype).double(), weight.to(dtype).double()  # the values both computations see
    target = target.to(dtype).double() if kind == "probability" else target
    low = lambda t: t.to(dtype) if t.is_floating_point() else t  # noqa: E731
    for reduction in ("none", "mean"):
        options = dict(reduction=reduction, label_smoothing=0.1, softcap=20.0, lse_square_scale=1e-3)
        exact = loss_and_grads(reference, x, target, weight=weight, **options)
        native = loss_and_grads(reference, low(x), low(target), weight=low(weight), **options)
        ours = loss_and_grads(softmax_cross_entropy, low(x), low(target), weight=low(weight), **options)
        for name, o, n, e in zip(["loss", "input", "target"], ours, native, exact):
            assert o.dtype == dtype
            ours_error = (o.double() - e).abs().max().item()
            native_error = (n.double() - e).abs().max().item()
            assert ours_error <= 2 * native_error + torch.finfo(dtype).eps * e.abs().max().item(), (
                f"{name}, {reduction}: error {ours_error:.3g}, torch's {dtype} composite {native_error:.3g}")


# ---- non-finite logits ----------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["rows", "spatial"])
def test_non_finite_logits(layout):
    """With a softcap +-inf logits become +-s (finite, as in the composite) and NaN stays NaN; with the
    z-loss alone a row holding NaN or +inf or only -inf has a NaN loss and gradient."""
    inf, nan = float("inf"), float("nan")
    x = torch.tensor([[0.0, -inf, 1.0], [nan, 0.0, 0.0], [inf, 0.0, 0.0], [-inf, -inf, -inf], [1.0, 2.0, 3.0]],
                     dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 0, 2])
    if layout == "spatial":
        x, target = x.t().unsqueeze(0).contiguous(), target.unsqueeze(0)
    for options in (dict(softcap=3.0), dict(lse_square_scale=0.1), dict(softcap=3.0, lse_square_scale=0.1)):
        assert_matches_reference(x, target, reduction="none", **options)
        assert_matches_reference(x, target, reduction="sum", **options)


def test_all_ignored_and_empty():
    """All ignored: 'mean' is NaN (0 / 0 for both terms, as torch's cross-entropy), 'sum' 0, 'none' zeros, and
    the gradient zero (the composite's 'mean' gradient is 0 / 0 there: not compared); no positions at all the
    same."""
    x, target, _ = make_case((4, 3), "index")
    target.fill_(-100)
    options = dict(lse_square_scale=0.1, softcap=1.0)
    for reduction in ("none", "sum"):
        assert_matches_reference(x, target, reduction=reduction, **options)
        assert_matches_reference(x[:0], target[:0], reduction=reduction, **options)
    for x_, t_ in ((x, target), (x[:0], target[:0])):
        loss, grad = loss_and_grads(softmax_cross_entropy, x_, t_, **options)
        assert loss.isnan() and reference(x_, t_, **options).isnan()
        assert torch.equal(grad, torch.zeros_like(x_))


def test_deterministic_across_thread_counts():
    x, target, weight = make_case((700, 37), "index", torch.float32, weighted=True)
    xs, ts, _ = make_case((4, 21, 20, 20), "index", torch.float32)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, threads if threads > 1 else 2):
            torch.set_num_threads(n)
            options = dict(softcap=5.0, lse_square_scale=1e-2)
            results.append(loss_and_grads(softmax_cross_entropy, x, target, weight=weight, **options)
                           + loss_and_grads(softmax_cross_entropy, xs, ts, **options))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results))


# ---- the module ------------------------------------------------------------------------------------
def test_module_options_are_keyword_attributes():
    weight = torch.rand(5, dtype=torch.float64) + 0.5
    module = SoftmaxCrossEntropyLoss(weight, 2, "sum", 0.1, lse_square_scale=0.01, softcap=30.0)
    assert (module.lse_square_scale, module.softcap) == (0.01, 30.0)
    assert "lse_square_scale=0.01" in repr(module) and "softcap=30.0" in repr(module)
    assert list(module.state_dict()) == ["weight"]
    x, target, _ = make_case((7, 5, 3), "index", ignored=False)
    torch.testing.assert_close(
        module(x, target), reference(x, target, weight, 2, "sum", 0.1, lse_square_scale=0.01, softcap=30.0)
    )
    module.softcap, module.lse_square_scale = None, 0.0  # plain attributes: changed between calls
    torch.testing.assert_close(module(x, target), F.cross_entropy(x, target, weight, ignore_index=2, reduction="sum",
                                                                   label_smoothing=0.1))
    with pytest.raises(TypeError):
        SoftmaxCrossEntropyLoss(None, -100, "mean", 0.0, 0.1)  # the options are keyword-only
    with pytest.raises(TypeError):
        softmax_cross_entropy(x, target, None, -100, "mean", 0.0, 0.1)


# ---- bad options -----------------------------------------------------------------------------------
X = torch.randn(4, 5)
T = torch.tensor([0, 1, 2, 3])
BAD_OPTIONS = [
    ("softcap zero", dict(softcap=0.0), RuntimeError, "expected softcap to be None or a finite number > 0, but got softcap=0"),
    ("softcap negative", dict(softcap=-2.0), RuntimeError, "expected softcap to be None or a finite number > 0, but got softcap=-2"),
    ("softcap infinite", dict(softcap=math.inf), RuntimeError, "expected softcap to be None or a finite number > 0"),
    ("softcap NaN", dict(softcap=math.nan), RuntimeError, "expected softcap to be None or a finite number > 0"),
    ("z-loss negative", dict(lse_square_scale=-0.1), RuntimeError, "expected lse_square_scale to be a finite number >= 0, but got lse_square_scale=-0.1"),
    ("z-loss NaN", dict(lse_square_scale=math.nan), RuntimeError, "expected lse_square_scale to be a finite number >= 0"),
    ("z-loss infinite", dict(lse_square_scale=math.inf), RuntimeError, "expected lse_square_scale to be a finite number >= 0"),
    ("softcap type", dict(softcap="1.0"), TypeError, "argument 'softcap' must be float or None, not str"),
    ("softcap tensor", dict(softcap=torch.tensor(1.0)), TypeError, "argument 'softcap' must be float or None, not Tensor"),
    ("z-loss type", dict(lse_square_scale=None), TypeError, "argument 'lse_square_scale' must be float, not NoneType"),
    ("z-loss bool", dict(lse_square_scale=True), TypeError, "argument 'lse_square_scale' must be float, not bool"),
]


@pytest.mark.parametrize("case", BAD_OPTIONS, ids=[c[0] for c in BAD_OPTIONS])
def test_bad_options(case):
    _, options, error, fragment = case
    with pytest.raises(error) as info:
        softmax_cross_entropy(X, T, **options)
    assert fragment in str(info.value)
    with pytest.raises(error) as info:
        SoftmaxCrossEntropyLoss(**options)(X, T)
    assert fragment in str(info.value)


@pytest.mark.parametrize("case", [c for c in BAD_OPTIONS if c[2] is RuntimeError], ids=lambda c: c[0])
def test_bad_options_of_the_ops_and_their_fake_kernels(case):
    """The ops refuse them themselves (forward and backward, with the op's name), and so do their fake
    kernels, with the same message, so that compiled code fails as eager code does."""
    _, options, _, fragment = case
    lse_square_scale, softcap = options.get("lse_square_scale", 0.0), options.get("softcap")
    _, m, log_s, normalizer = ops.softmax_cross_entropy_forward(X, T, None, "none", -100, 0.0)

    def forward(x, t):
        return ops.softmax_cross_entropy_forward(x, t, None, "mean", -100, 0.0, lse_square_scale, softcap)

    def backward(x, t, m, log_s, normalizer):
        return ops.softmax_cross_entropy_backward(
            torch.ones_like(m), x, t, None, m, log_s, normalizer, "none", -100, 0.0, [True, False], lse_square_scale,
            softcap,
        )

    for op_name, call, args in [("softmax_cross_entropy:", forward, (X, T)),
                                ("softmax_cross_entropy_backward:", backward, (X, T, m, log_s, normalizer))]:
        with pytest.raises(RuntimeError, match=op_name) as info:
            call(*args)
        assert fragment in str(info.value)
        with FakeTensorMode() as mode:
            fakes = [mode.from_tensor(a) for a in args]
            with pytest.raises(RuntimeError, match=op_name) as info:
                call(*fakes)
            assert fragment in str(info.value)
