"""torch.func on the functional API: grad, vjp, jvp, jacrev, jacfwd, hessian and vmap (batching rules of
the ops, per-sample gradients) match the same transforms of the native composition, in float64."""
import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vjp, vmap

from torch_manualbp.functional import linear_sigmoid

DTYPE = torch.float64


def _native_linear_sigmoid(input, weight, bias=None):
    return torch.sigmoid(F.linear(input, weight, bias))


def _assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


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
        _assert_close(
            hessian(_scalar(linear_sigmoid), argnums=argnums)(*args),
            hessian(_scalar(_native_linear_sigmoid), argnums=argnums)(*args),
        )
    _assert_close(
        jacrev(jacrev(_scalar(linear_sigmoid), argnums=1), argnums=1)(*args),
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
    actual = vmap(vmap(linear_sigmoid, in_dims=(0, None, 0)), in_dims=(0, None, None))(input, weight, bias)
    _assert_close(actual, _native_linear_sigmoid(input, weight, bias.unsqueeze(1)))
