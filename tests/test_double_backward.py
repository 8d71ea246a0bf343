"""Double backward: gradgradcheck in float64 through the layers (the backward ops are differentiable,
torch_manualbp/functions.py), and a gradient penalty compared with the native composition."""
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from torch_manualbp.functional import linear_sigmoid

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
