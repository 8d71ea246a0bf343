"""Double backward: gradgradcheck in float64 through the layers (the backward ops are differentiable,
torch_manualbp/layers/), and a gradient penalty compared with the native composition."""
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from torch_manualbp.functional import linear_sigmoid, softmax_cross_entropy

ops = torch.ops.torch_manualbp


def _randn(*shape, requires_grad=True):
    return torch.randn(shape, dtype=torch.float64, requires_grad=requires_grad)


# (input shape, out_features, bias shape or None)
LINEAR_SIGMOID_CASES = [
    ((4, 3), 5, (5,)),
    ((4, 3), 5, None),
    ((2, 3, 4), 2, (2,)),
    ((3,), 4, (4,)),
    ((4, 3), 5, (4, 5)),
    ((2, 3, 4), 2, (3, 1)),
    ((2, 3, 4), 2, (1, 1, 1)),
    ((2, 3, 4), 2, ()),
    ((0, 3), 2, (2,)),
]


@pytest.mark.parametrize("case", LINEAR_SIGMOID_CASES, ids=str)
def test_linear_sigmoid_gradgradcheck(case):
    input_shape, out_features, bias_shape = case
    args = (
        _randn(*input_shape),
        _randn(out_features, input_shape[-1]),
        None if bias_shape is None else _randn(*bias_shape),
    )
    assert gradcheck(linear_sigmoid, args)
    assert gradgradcheck(linear_sigmoid, args)


@pytest.mark.parametrize("requires_grad", [(True, False, False), (False, True, False), (False, False, True)], ids=str)
def test_linear_sigmoid_gradgradcheck_some_inputs(requires_grad):
    """Only some inputs require grad: the backward op runs with a partial output_mask."""
    shapes = [(4, 3), (5, 3), (5,)]
    args = tuple(_randn(*shape, requires_grad=flag) for shape, flag in zip(shapes, requires_grad))
    assert gradgradcheck(linear_sigmoid, args)


@pytest.mark.parametrize("output_mask", [[True, True, True], [True, False, True], [False, True, False]], ids=str)
def test_linear_sigmoid_backward_op_gradcheck(output_mask):
    """The backward op called directly: its registered autograd, and second order through it."""
    input, weight, bias = _randn(4, 3), _randn(5, 3), _randn(5)
    with torch.no_grad():
        output = ops.linear_sigmoid_forward(input, weight, bias)

    def backward_op(grad_output, input, weight, output):
        grads = ops.linear_sigmoid_backward(grad_output, input, weight, output, [5], output_mask)
        return tuple(g for g, wanted in zip(grads, output_mask) if wanted)

    args = (_randn(4, 5), input, weight, output.requires_grad_())
    assert gradcheck(backward_op, args)
    assert gradgradcheck(backward_op, args)


def test_linear_sigmoid_gradient_penalty():
    """A WGAN-GP style penalty, ||d out / d input||^2, trained through: matches the native layers."""
    input = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def penalty(fn):
        output = fn(input, weight, bias)
        (grad_input,) = torch.autograd.grad(output.sum(), input, create_graph=True)
        return grad_input.square().sum() + output.mean()

    actual = torch.autograd.grad(penalty(linear_sigmoid), (input, weight, bias))
    expected = torch.autograd.grad(penalty(lambda x, w, b: torch.sigmoid(F.linear(x, w, b))), (input, weight, bias))
    torch.testing.assert_close(actual, expected)


# (input shape, target kind, reduction, weight, ignore_index, label_smoothing)
SOFTMAX_CROSS_ENTROPY_CASES = [
    ((4, 5), "index", "mean", False, -100, 0.0),
    ((4, 5), "index", "mean", True, 1, 0.1),
    ((4, 5), "index", "sum", True, -100, 0.0),
    ((4, 5), "index", "none", False, 3, 0.2),
    ((5,), "index", "mean", True, -100, 0.1),
    ((2, 5, 3), "index", "mean", True, 0, 0.05),
    ((2, 5, 3), "index", "none", True, -100, 0.0),
    ((4, 5), "probability", "mean", False, -100, 0.0),
    ((4, 5), "probability", "sum", True, -100, 0.3),
    ((4, 5), "probability", "none", True, -100, 0.0),
    ((5,), "probability", "none", False, -100, 0.1),
    ((2, 5, 3), "probability", "mean", True, -100, 0.1),
]


def _softmax_cross_entropy_args(case):
    shape, kind, reduction, has_weight, ignore_index, label_smoothing = case
    class_dim = 0 if len(shape) == 1 else 1
    classes = shape[class_dim]
    input = _randn(*shape)
    if kind == "probability":
        target = torch.rand(shape, dtype=torch.float64).softmax(class_dim).requires_grad_()
    else:
        positions = [size for dim, size in enumerate(shape) if dim != class_dim]
        target = torch.randint(0, classes, positions)
        if ignore_index >= 0:
            target.view(-1)[0] = ignore_index
    weight = torch.rand(classes, dtype=torch.float64) + 0.5 if has_weight else None
    options = dict(weight=weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)
    return input, target, options


@pytest.mark.parametrize("case", SOFTMAX_CROSS_ENTROPY_CASES, ids=str)
def test_softmax_cross_entropy_gradgradcheck(case):
    input, target, options = _softmax_cross_entropy_args(case)

    if target.is_floating_point():  # probability targets are differentiable too

        def loss(input, target):
            return softmax_cross_entropy(input, target, **options)

        args = (input, target)
    else:

        def loss(input):
            return softmax_cross_entropy(input, target, **options)

        args = (input,)
    assert gradcheck(loss, args)
    assert gradgradcheck(loss, args)


def test_softmax_cross_entropy_hessian_vector_product():
    """Hessian-vector products of the loss in the logits (a second backward), against native."""
    input, target, options = _softmax_cross_entropy_args(((6, 4), "index", "mean", True, -100, 0.1))
    vector = torch.randn_like(input)

    def hvp(loss_fn):
        (grad_input,) = torch.autograd.grad(loss_fn(input, target, **options), input, create_graph=True)
        return torch.autograd.grad((grad_input * vector).sum(), input)

    torch.testing.assert_close(hvp(softmax_cross_entropy), hvp(F.cross_entropy))


@pytest.mark.parametrize("output_mask", [[True, True], [True, False], [False, True]], ids=str)
def test_softmax_cross_entropy_backward_op_gradcheck(output_mask):
    """The backward op called directly, fed by the forward op: its registered derivative takes the
    max_logit and log_sum as the functions of the input they are (the forward marks them non-differentiable)."""
    input, target, options = _softmax_cross_entropy_args(((3, 4, 2), "probability", "none", True, -100, 0.1))
    weight, reduction = options["weight"], options["reduction"]

    def backward_op(grad_loss, input, target):
        _, max_logit, log_sum, normalizer = ops.softmax_cross_entropy_forward(input, target, weight, reduction, -100, 0.1)
        grads = ops.softmax_cross_entropy_backward(
            grad_loss, input, target, weight, max_logit, log_sum, normalizer, reduction, -100, 0.1, output_mask
        )
        return tuple(g for g, wanted in zip(grads, output_mask) if wanted)

    args = (_randn(3, 2), input, target)
    assert gradcheck(backward_op, args)
    assert gradgradcheck(backward_op, args)
