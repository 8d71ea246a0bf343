"""Autocast: the layers follow the precision rules of their native counterparts. LinearSigmoid runs in
the autocast dtype like F.linear (float64 left alone); gradients of float32 parameters come back in
float32. The ops called directly get the same casts. CPU bfloat16/float16 here, CUDA when a GPU exists."""
import pytest
import torch
import torch.nn.functional as F

import torch_manualbp
from torch_manualbp.functional import linear_sigmoid

ops = torch.ops.torch_manualbp

# One rounding of the output to the autocast dtype, plus the GEMM's accumulation order.
TOLERANCES = {torch.bfloat16: dict(rtol=2e-2, atol=2e-2), torch.float16: dict(rtol=2e-3, atol=2e-3)}

DEVICES_AND_DTYPES = [
    ("cpu", torch.bfloat16),
    ("cpu", torch.float16),
    pytest.param("cuda", torch.float16, marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
    pytest.param("cuda", torch.bfloat16, marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]


def _native_linear_sigmoid(input, weight, bias=None):
    return torch.sigmoid(F.linear(input, weight, bias))


def _parameters(device, *shapes, dtype=torch.float32):
    return [torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for shape in shapes]


def _output_and_grads(fn, device, dtype, args):
    with torch.autocast(device, dtype=dtype):
        output = fn(*args)
        grads = torch.autograd.grad(output.float().square().sum(), args)
    return output, grads


@pytest.mark.parametrize("device, dtype", DEVICES_AND_DTYPES)
def test_linear_sigmoid_follows_f_linear(device, dtype):
    args = _parameters(device, (16, 12), (10, 12), (10,))
    output, grads = _output_and_grads(linear_sigmoid, device, dtype, args)
    expected_output, expected_grads = _output_and_grads(_native_linear_sigmoid, device, dtype, args)
    assert output.dtype == expected_output.dtype == dtype
    torch.testing.assert_close(output, expected_output, **TOLERANCES[dtype])
    for grad, expected in zip(grads, expected_grads):
        assert grad.dtype == expected.dtype == torch.float32
        torch.testing.assert_close(grad, expected, **TOLERANCES[dtype])


@pytest.mark.parametrize("device, dtype", DEVICES_AND_DTYPES)
def test_float64_is_not_cast(device, dtype):
    args = _parameters(device, (4, 3), (5, 3), (5,), dtype=torch.float64)
    output, grads = _output_and_grads(linear_sigmoid, device, dtype, args)
    expected_output, expected_grads = _output_and_grads(_native_linear_sigmoid, device, dtype, args)
    assert output.dtype == expected_output.dtype == torch.float64
    torch.testing.assert_close(output, expected_output)
    torch.testing.assert_close(grads, expected_grads)


@pytest.mark.parametrize("device, dtype", DEVICES_AND_DTYPES)
def test_ops_called_directly(device, dtype):
    input, weight, bias = _parameters(device, (4, 3), (5, 3), (5,))
    with torch.autocast(device, dtype=dtype):
        output = ops.linear_sigmoid_forward(input, weight, bias)
        grad_input, grad_weight, grad_bias = torch.autograd.grad(output.float().sum(), (input, weight, bias))
        backward = ops.linear_sigmoid_backward(
            torch.ones(4, 5, device=device), input, weight, output, [5], [True, True, True]
        )
    assert output.dtype == dtype
    assert grad_input.dtype == grad_weight.dtype == grad_bias.dtype == torch.float32
    assert all(grad.dtype == dtype for grad in backward)
    torch.testing.assert_close(output, _native_linear_sigmoid(input, weight, bias).to(dtype), **TOLERANCES[dtype])


@pytest.mark.parametrize("device, dtype", DEVICES_AND_DTYPES)
def test_autocast_off_inside_is_respected(device, dtype):
    args = _parameters(device, (4, 3), (5, 3), (5,))
    with torch.autocast(device, dtype=dtype):
        with torch.autocast(device, enabled=False):
            assert linear_sigmoid(*args).dtype == torch.float32


def test_compiled_model_under_autocast():
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch_manualbp.LinearSigmoid(6, 8), torch_manualbp.LinearSigmoid(8, 3))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    input = torch.randn(5, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = compiled(input)
        expected = model(input)
    assert output.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(output, expected)
    (grad,) = torch.autograd.grad(output.float().sum(), model[0].weight)
    (expected_grad,) = torch.autograd.grad(expected.float().sum(), model[0].weight)
    assert grad.dtype == torch.float32
    torch.testing.assert_close(grad, expected_grad)
