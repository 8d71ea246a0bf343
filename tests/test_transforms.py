"""torch.func on the functional API: grad, vjp, jvp, jacrev, jacfwd, hessian and vmap (batching rules of
the ops, per-sample gradients) match the same transforms of the native composition, in float64."""
import functools
import re

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vjp, vmap
from torch.utils._pytree import tree_map

import torch_manualbp
from torch_manualbp._compat import NESTED_VMAP_SUPPORTED
from torch_manualbp.functional import linear_cross_entropy, linear_sigmoid, softmax_cross_entropy

DTYPE = torch.float64


def _native_linear_sigmoid(input, weight, bias=None):
    return torch.sigmoid(F.linear(input, weight, bias))


def _assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


def _assert_close_under_nested_vmap(compute, expected, refused_by_layers=False):
    """compute() runs the layers under two vmap levels (hessian, jacrev of jacrev, vmap of vmap): its result
    against expected. On torch < 2.8, whose torch.func fails there, either the right values or an error,
    never a wrong value: the layers' own refusal where they see both levels when applied (vmap of vmap:
    refused_by_layers), else torch's internal failure where the second level only wraps the backward
    (hessian: 2.4/2.5 an INTERNAL ASSERT, 2.6 a TypeError from _add_batch_dim; some cases run)."""
    if NESTED_VMAP_SUPPORTED:
        _assert_close(compute(), expected)
        return
    refusal = rf"under nested vmap .* need torch 2\.8 or newer; torch {re.escape(torch.__version__)} fails"
    if refused_by_layers:
        with pytest.raises(RuntimeError, match=refusal):
            compute()
        return
    torch_failure = r"savedLocalDispatchKeySet_\.has_value\(\) INTERNAL ASSERT FAILED|_add_batch_dim\(\): incompatible"
    try:
        actual = compute()
    except (RuntimeError, TypeError) as error:
        assert re.search(f"{refusal}|{torch_failure}", str(error)), error
    else:
        _assert_close(actual, expected)


def _randn(*shape):
    return torch.randn(*shape, dtype=DTYPE)


# (input shape, out_features, bias shape or None)
LINEAR_SIGMOID_CASES = [
    ((4, 3), 5, (5,)),
    ((2, 3, 4), 2, (2,)),
    ((4, 3), 5, None),
    ((4, 3), 5, (4, 5)),
    ((3,), 4, (4,)),
]


def _linear_sigmoid_args(case):
    input_shape, out_features, bias_shape = case
    bias = None if bias_shape is None else _randn(*bias_shape)
    return _randn(*input_shape), _randn(out_features, input_shape[-1]), bias


def _argnums(bias):
    return [0, 1, 2, (0, 1, 2)] if bias is not None else [0, 1, (0, 1)]


@pytest.mark.parametrize("transform", [jacrev, jacfwd], ids=lambda t: t.__name__)
@pytest.mark.parametrize("case", LINEAR_SIGMOID_CASES, ids=str)
def test_linear_sigmoid_jacobians(case, transform):
    args = _linear_sigmoid_args(case)
    for argnums in _argnums(args[2]):
        actual = transform(linear_sigmoid, argnums=argnums)(*args)
        _assert_close(actual, transform(_native_linear_sigmoid, argnums=argnums)(*args))


def _scalar(fn):
    """A scalar function of the layer whose Hessian is not diagonal in the output."""
    return lambda input, weight, bias: fn(input, weight, bias).sum().square()


@pytest.mark.parametrize("case", LINEAR_SIGMOID_CASES, ids=str)
def test_linear_sigmoid_grad_and_hessian(case):
    args = _linear_sigmoid_args(case)
    for argnums in _argnums(args[2]):
        _assert_close(
            grad(_scalar(linear_sigmoid), argnums=argnums)(*args),
            grad(_scalar(_native_linear_sigmoid), argnums=argnums)(*args),
        )
        # hessian is jacfwd(jacrev): forward-mode through the backward op.
        _assert_close_under_nested_vmap(
            lambda: hessian(_scalar(linear_sigmoid), argnums=argnums)(*args),
            hessian(_scalar(_native_linear_sigmoid), argnums=argnums)(*args),
        )
    _assert_close_under_nested_vmap(
        lambda: jacrev(jacrev(_scalar(linear_sigmoid), argnums=1), argnums=1)(*args),
        hessian(_scalar(_native_linear_sigmoid), argnums=1)(*args),
    )


@pytest.mark.parametrize("case", LINEAR_SIGMOID_CASES, ids=str)
def test_linear_sigmoid_vjp_and_jvp(case):
    args = [a for a in _linear_sigmoid_args(case) if a is not None]
    output, pullback = vjp(linear_sigmoid, *args)
    native_output, native_pullback = vjp(_native_linear_sigmoid, *args)
    _assert_close(output, native_output)
    cotangent = torch.randn_like(output)
    _assert_close(pullback(cotangent), native_pullback(cotangent))
    tangents = tuple(torch.randn_like(a) for a in args)
    _assert_close(jvp(linear_sigmoid, tuple(args), tangents), jvp(_native_linear_sigmoid, tuple(args), tangents))


# in_dims of (input, weight, bias): which arguments carry the vmapped dim, and where.
VMAP_IN_DIMS = [(0, None, None), (1, None, None), (None, None, 0), (0, None, 0), (0, 0, None), (None, 0, 0), (2, 0, 1)]


@pytest.mark.parametrize("in_dims", VMAP_IN_DIMS, ids=str)
def test_linear_sigmoid_vmap(in_dims):
    batch, rows, in_features, out_features = 3, 4, 5, 2
    shapes = [(rows, in_features), (out_features, in_features), (out_features,)]
    args = []
    for shape, dim in zip(shapes, in_dims):
        if dim is not None:
            shape = (*shape[:dim], batch, *shape[dim:])
        args.append(_randn(*shape))
    _assert_close(vmap(linear_sigmoid, in_dims=in_dims)(*args), vmap(_native_linear_sigmoid, in_dims=in_dims)(*args))
    # The backward op under vmap: the gradient of each sample's loss.
    loss = lambda fn: lambda *a: fn(*a).square().sum()  # noqa: E731
    _assert_close(
        vmap(grad(loss(linear_sigmoid), argnums=(0, 1, 2)), in_dims=in_dims)(*args),
        vmap(grad(loss(_native_linear_sigmoid), argnums=(0, 1, 2)), in_dims=in_dims)(*args),
    )


def test_linear_sigmoid_per_sample_gradients():
    """The classic use of vmap(grad): one gradient of the parameters per sample of a batch."""
    input, weight, bias = _randn(6, 2, 5), _randn(3, 5), _randn(3)

    def loss(fn):
        return lambda weight, bias, sample: fn(sample, weight, bias).log().sum()

    per_sample = vmap(grad(loss(linear_sigmoid), argnums=(0, 1)), in_dims=(None, None, 0))(weight, bias, input)
    for index, (grad_weight, grad_bias) in enumerate(zip(*per_sample)):
        expected = torch.autograd.grad(
            loss(_native_linear_sigmoid)(weight.requires_grad_(), bias.requires_grad_(), input[index]), (weight, bias)
        )
        _assert_close((grad_weight, grad_bias), expected)


def test_linear_sigmoid_nested_vmap():
    input, weight, bias = _randn(2, 3, 4, 5), _randn(6, 5), _randn(3, 6)
    _assert_close_under_nested_vmap(
        lambda: vmap(vmap(linear_sigmoid, in_dims=(0, None, 0)), in_dims=(0, None, None))(input, weight, bias),
        _native_linear_sigmoid(input, weight, bias.unsqueeze(1)),
        refused_by_layers=True,
    )


# (input shape, target kind, reduction, weight, ignore_index, label_smoothing)
SOFTMAX_CROSS_ENTROPY_CASES = [
    ((4, 5), "index", "mean", True, 1, 0.1),
    ((4, 5), "index", "none", False, -100, 0.0),
    ((5,), "index", "sum", True, -100, 0.2),
    ((2, 5, 3), "index", "mean", False, 0, 0.0),
    ((4, 5), "probability", "mean", True, -100, 0.1),
    ((2, 5, 3), "probability", "none", False, -100, 0.0),
    ((5,), "probability", "sum", False, -100, 0.0),
]


def _class_dim(shape):
    return 0 if len(shape) == 1 else 1


def _softmax_cross_entropy_args(case, batch=None):
    """(input, target, options); with batch: a leading vmapped dim of that size on input and target."""
    shape, kind, reduction, has_weight, ignore_index, label_smoothing = case
    class_dim = _class_dim(shape)
    lead = () if batch is None else (batch,)
    input = _randn(*lead, *shape)
    if kind == "probability":
        target = _randn(*lead, *shape).softmax(class_dim + len(lead))
    else:
        positions = [size for dim, size in enumerate(shape) if dim != class_dim]
        target = torch.randint(0, shape[class_dim], (*lead, *positions))
        if ignore_index >= 0:
            target.view(-1)[0] = ignore_index
    weight = torch.rand(shape[class_dim], dtype=DTYPE) + 0.5 if has_weight else None
    return input, target, dict(weight=weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)


def _softmax_cross_entropy_argnums(target):
    return (0, 1) if target.is_floating_point() else 0


@pytest.mark.parametrize("case", SOFTMAX_CROSS_ENTROPY_CASES, ids=str)
def test_softmax_cross_entropy_jacobians_and_hessian(case):
    input, target, options = _softmax_cross_entropy_args(case)
    argnums = _softmax_cross_entropy_argnums(target)

    def ours(input, target):
        return softmax_cross_entropy(input, target, **options)

    def native(input, target):
        return F.cross_entropy(input, target, **options)

    for transform in (jacrev, jacfwd):
        _assert_close(transform(ours, argnums=argnums)(input, target), transform(native, argnums=argnums)(input, target))

    def scalar(fn):
        return lambda input, target: fn(input, target).sum().square()

    expected_hessian = hessian(scalar(native), argnums=argnums)(input, target)
    _assert_close_under_nested_vmap(lambda: hessian(scalar(ours), argnums=argnums)(input, target), expected_hessian)
    _assert_close_under_nested_vmap(
        lambda: jacrev(jacrev(scalar(ours), argnums=argnums), argnums=argnums)(input, target), expected_hessian
    )

    if target.is_floating_point():
        primals = (input, target)
    else:  # index targets are not differentiable: the functions of the input alone
        primals = (input,)
        ours, native = functools.partial(ours, target=target), functools.partial(native, target=target)
    output, pullback = vjp(ours, *primals)
    native_output, native_pullback = vjp(native, *primals)
    _assert_close(output, native_output)
    cotangent = torch.randn_like(output)
    _assert_close(pullback(cotangent), native_pullback(cotangent))
    tangents = tuple(torch.randn_like(primal) for primal in primals)
    _assert_close(jvp(ours, primals, tangents), jvp(native, primals, tangents))


@pytest.mark.parametrize("case", SOFTMAX_CROSS_ENTROPY_CASES, ids=str)
def test_softmax_cross_entropy_vmap_and_per_sample_gradients(case):
    """vmap over a leading dim of input and target; the reference is native, sample by sample
    (native vmap does not batch every option: weight with label smoothing hits masked_select)."""
    batch = 3
    inputs, targets, options = _softmax_cross_entropy_args(case, batch=batch)
    argnums = _softmax_cross_entropy_argnums(targets)

    def ours(input, target):
        return softmax_cross_entropy(input, target, **options)

    def native(input, target):
        return F.cross_entropy(input, target, **options)

    def loss(fn):
        return lambda input, target: fn(input, target).sum()

    losses = vmap(ours)(inputs, targets)
    grads = vmap(grad(loss(ours), argnums=argnums))(inputs, targets)
    for index in range(batch):
        _assert_close(losses[index], native(inputs[index], targets[index]))
        expected = grad(loss(native), argnums=argnums)(inputs[index], targets[index])
        _assert_close(tree_map(lambda g: g[index], grads), expected)
    # Only the target batched: the same logits against several targets.
    _assert_close(
        vmap(ours, in_dims=(None, 0))(inputs[0], targets),
        torch.stack([native(inputs[0], targets[index]) for index in range(batch)]),
    )


def test_model_per_sample_gradients_with_both_layers():
    """functional_call + vmap(grad): per-sample gradients of a small classifier built from both layers."""
    model = torch.nn.Sequential(torch_manualbp.LinearSigmoid(4, 6), torch.nn.Linear(6, 3)).to(DTYPE)
    params = {name: p.detach() for name, p in model.named_parameters()}
    inputs, targets = _randn(5, 4), torch.randint(0, 3, (5,))

    def sample_loss(params, input, target, loss_fn):
        logits = torch.func.functional_call(model, params, (input.unsqueeze(0),))
        return loss_fn(logits, target.unsqueeze(0), label_smoothing=0.1)

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0, None))(params, inputs, targets, softmax_cross_entropy)
    for index in range(5):
        expected = grad(sample_loss)(params, inputs[index], targets[index], F.cross_entropy)
        _assert_close({name: g[index] for name, g in per_sample.items()}, expected)


# ---- torch.autograd.forward_ad (dual tensors, no functorch) ------------------------------------------------
# LinearSigmoidFunction saves for its jvp only while a dual level is open or a functorch transform runs
# (the eager path skips save_for_forward otherwise): dual tensors must still get exact tangents.
def test_linear_sigmoid_forward_ad_with_dual_tensors():
    import torch.autograd.forward_ad as fwAD

    x, w, b = (torch.randn(*shape, dtype=torch.float64) for shape in ((5, 4), (3, 4), (3,)))
    tangents = [torch.randn_like(t) for t in (x, w, b)]
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, t) for p, t in zip((x, w, b), tangents)]
        ours = fwAD.unpack_dual(linear_sigmoid(*duals))
        native = fwAD.unpack_dual(torch.sigmoid(F.linear(*duals)))
    torch.testing.assert_close(ours.primal, native.primal)
    torch.testing.assert_close(ours.tangent, native.tangent)


@pytest.mark.parametrize("kind", ["index", "probability"])
def test_softmax_cross_entropy_forward_ad_with_dual_tensors(kind):
    import torch.autograd.forward_ad as fwAD

    x = torch.randn(6, 5, dtype=torch.float64)
    target = torch.randint(0, 5, (6,)) if kind == "index" else torch.rand(6, 5, dtype=torch.float64).softmax(1)
    primals = [x] + ([target] if kind == "probability" else [])
    tangents = [torch.randn_like(p) for p in primals]
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, t) for p, t in zip(primals, tangents)]
        args = duals if kind == "probability" else [duals[0], target]
        ours = fwAD.unpack_dual(softmax_cross_entropy(*args, label_smoothing=0.1))
        native = fwAD.unpack_dual(F.cross_entropy(*args, label_smoothing=0.1))
    torch.testing.assert_close(ours.primal, native.primal)
    torch.testing.assert_close(ours.tangent, native.tangent)


# ---- LinearCrossEntropy ----------------------------------------------------------------------------------
# (token shape, classes, kind, reduction, options)
LINEAR_CROSS_ENTROPY_CASES = [
    ((4,), 5, "index", "mean", dict(label_smoothing=0.1, softcap=3.0)),
    ((2, 3), 5, "index", "none", dict(lse_square_scale=0.1)),
    ((), 6, "index", "sum", dict(label_smoothing=0.2, lse_square_scale=0.05)),
    ((4,), 5, "probability", "mean", dict(softcap=2.0)),
    ((2, 2), 4, "probability", "none", dict(label_smoothing=0.1)),
]


def _native_linear_cross_entropy(input, linear_weight, target, linear_bias=None, reduction="mean",
                                 label_smoothing=0.0, lse_square_scale=0.0, softcap=None):
    logits = F.linear(input, linear_weight, linear_bias)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    probability = target.shape == logits.shape
    flat = logits.reshape(-1, logits.shape[-1])
    flat_target = target.reshape(-1, logits.shape[-1]) if probability else target.reshape(-1)
    loss = F.cross_entropy(flat, flat_target, reduction="none", label_smoothing=label_smoothing)
    loss = loss + lse_square_scale * torch.logsumexp(flat, -1).square()
    if reduction == "none":
        return loss.reshape(logits.shape[:-1])
    return loss.sum() if reduction == "sum" else loss.mean()


def _linear_cross_entropy_args(case, batch=None):
    tokens, classes, kind, reduction, options = case
    lead = () if batch is None else (batch,)
    input, weight, bias = _randn(*lead, *tokens, 3), _randn(classes, 3), _randn(classes)
    if kind == "probability":
        target = _randn(*lead, *tokens, classes).softmax(-1)
    else:
        target = torch.randint(0, classes, (*lead, *tokens))
    return input, weight, bias, target, dict(reduction=reduction, **options)


@pytest.mark.parametrize("case", LINEAR_CROSS_ENTROPY_CASES, ids=str)
def test_linear_cross_entropy_jacobians_hessian_vjp_jvp(case):
    input, weight, bias, target, options = _linear_cross_entropy_args(case)
    probability = target.is_floating_point()
    argnums = (0, 1, 2, 3) if probability else (0, 1, 2)

    def ours(input, weight, bias, target):
        return linear_cross_entropy(input, weight, target, linear_bias=bias, chunk_budget=16, **options)

    def native(input, weight, bias, target):
        return _native_linear_cross_entropy(input, weight, target, linear_bias=bias, **options)

    args = (input, weight, bias, target)
    for transform in (jacrev, jacfwd):
        _assert_close(transform(ours, argnums=argnums)(*args), transform(native, argnums=argnums)(*args))

    def scalar(fn):
        return lambda *a: fn(*a).sum().square()

    _assert_close_under_nested_vmap(
        lambda: hessian(scalar(ours), argnums=argnums)(*args), hessian(scalar(native), argnums=argnums)(*args)
    )
    primals = args if probability else args[:3]
    bound_ours = ours if probability else functools.partial(ours, target=target)
    bound_native = native if probability else functools.partial(native, target=target)
    output, pullback = vjp(bound_ours, *primals)
    native_output, native_pullback = vjp(bound_native, *primals)
    _assert_close(output, native_output)
    cotangent = torch.randn_like(output)
    _assert_close(pullback(cotangent), native_pullback(cotangent))
    tangents = tuple(torch.randn_like(p) for p in primals)
    _assert_close(jvp(bound_ours, primals, tangents), jvp(bound_native, primals, tangents))


@pytest.mark.parametrize("case", LINEAR_CROSS_ENTROPY_CASES, ids=str)
def test_linear_cross_entropy_vmap_and_per_sample_gradients(case):
    batch = 3
    inputs, weight, bias, targets, options = _linear_cross_entropy_args(case, batch=batch)

    def ours(input, weight, bias, target):
        return linear_cross_entropy(input, weight, target, linear_bias=bias, **options)

    def native(input, weight, bias, target):
        return _native_linear_cross_entropy(input, weight, target, linear_bias=bias, **options)

    def loss(fn):
        return lambda *a: fn(*a).sum()

    losses = vmap(ours, in_dims=(0, None, None, 0))(inputs, weight, bias, targets)
    per_sample = vmap(grad(loss(ours), argnums=(0, 1, 2)), in_dims=(0, None, None, 0))(inputs, weight, bias, targets)
    for index in range(batch):
        _assert_close(losses[index], native(inputs[index], weight, bias, targets[index]))
        expected = grad(loss(native), argnums=(0, 1, 2))(inputs[index], weight, bias, targets[index])
        _assert_close(tree_map(lambda g: g[index], per_sample), expected)


@pytest.mark.parametrize("kind", ["index", "probability"])
def test_linear_cross_entropy_forward_ad_with_dual_tensors(kind):
    import torch.autograd.forward_ad as fwAD

    input, weight, bias, target, options = _linear_cross_entropy_args(((6,), 5, kind, "mean", dict(softcap=2.0)))
    primals = [input, weight, bias] + ([target] if kind == "probability" else [])
    tangents = [torch.randn_like(p) for p in primals]
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, t) for p, t in zip(primals, tangents)]
        t = duals[3] if kind == "probability" else target
        ours = fwAD.unpack_dual(linear_cross_entropy(duals[0], duals[1], t, linear_bias=duals[2], **options))
        native = fwAD.unpack_dual(_native_linear_cross_entropy(duals[0], duals[1], t, linear_bias=duals[2], **options))
    torch.testing.assert_close(ours.primal, native.primal)
    torch.testing.assert_close(ours.tangent, native.tangent)
