"""Autocast: the layers follow the precision rules of their native counterparts. LinearSigmoid runs in
the autocast dtype like F.linear, softmax cross-entropy in float32 like F.cross_entropy, float64 is
left alone; gradients of float32 parameters come back in float32. The ops called directly get the same
casts. CPU bfloat16/float16 here, CUDA when a GPU exists."""
import pytest
import torch
import torch.nn.functional as F

import torch_manualbp
from torch_manualbp.functional import linear_cross_entropy, linear_sigmoid, softmax_cross_entropy

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


@pytest.mark.parametrize("device, dtype", DEVICES_AND_DTYPES)
@pytest.mark.parametrize("logits_dtype", ["autocast", torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kind", ["index", "probability"])
def test_softmax_cross_entropy_follows_f_cross_entropy(device, dtype, logits_dtype, kind):
    logits_dtype = dtype if logits_dtype == "autocast" else logits_dtype
    logits = torch.randn(8, 5, 3, device=device, dtype=logits_dtype, requires_grad=True)
    if kind == "probability":
        target = torch.rand(8, 5, 3, device=device, dtype=logits_dtype).softmax(1)
    else:
        target = torch.randint(0, 5, (8, 3), device=device)
    weight = torch.rand(5, device=device) + 0.5 if logits_dtype != torch.float64 else None
    options = dict(weight=weight, label_smoothing=0.1)

    def run(loss_fn):
        with torch.autocast(device, dtype=dtype):
            loss = loss_fn(logits, target, **options)
            (grad,) = torch.autograd.grad(loss, logits)
        return loss, grad

    (loss, grad), (expected_loss, expected_grad) = run(softmax_cross_entropy), run(F.cross_entropy)
    assert loss.dtype == expected_loss.dtype == (torch.float64 if logits_dtype == torch.float64 else torch.float32)
    assert grad.dtype == expected_grad.dtype == logits_dtype
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("device, dtype", DEVICES_AND_DTYPES)
def test_softmax_cross_entropy_ops_called_directly(device, dtype):
    logits = torch.randn(4, 5, device=device, dtype=dtype)
    target = torch.randint(0, 5, (4,), device=device)
    with torch.autocast(device, dtype=dtype):
        loss, max_logit, log_sum, normalizer = ops.softmax_cross_entropy_forward(logits, target, None, "mean", -100, 0.0)
        grad_input, _ = ops.softmax_cross_entropy_backward(
            torch.ones((), device=device, dtype=dtype), logits, target, None, max_logit, log_sum, normalizer, "mean",
            -100, 0.0, [True, False],
        )
    assert loss.dtype == max_logit.dtype == log_sum.dtype == normalizer.dtype == grad_input.dtype == torch.float32
    torch.testing.assert_close(loss, F.cross_entropy(logits.float(), target))


def _classifier():
    return torch.nn.Sequential(torch_manualbp.LinearSigmoid(6, 8), torch_manualbp.LinearSigmoid(8, 3))


def test_model_under_autocast_matches_native_model():
    model = _classifier()
    native = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Sigmoid(), torch.nn.Linear(8, 3), torch.nn.Sigmoid())
    native.load_state_dict({k.replace("1.", "2."): v for k, v in model.state_dict().items()})
    input, target = torch.randn(16, 6), torch.randint(0, 3, (16,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = softmax_cross_entropy(model(input), target)
        expected_loss = F.cross_entropy(native(input), target)
    assert loss.dtype == expected_loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected_loss, **TOLERANCES[torch.bfloat16])
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected_grads = torch.autograd.grad(expected_loss, list(native.parameters()))
    for grad, expected in zip(grads, expected_grads):
        assert grad.dtype == torch.float32
        torch.testing.assert_close(grad, expected, **TOLERANCES[torch.bfloat16])


def test_compiled_model_under_autocast():
    torch._dynamo.reset()
    model = _classifier()

    def loss_fn(input, target):
        return softmax_cross_entropy(model(input), target)

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    input, target = torch.randn(5, 6), torch.randint(0, 3, (5,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = compiled(input, target)
        expected = loss_fn(input, target)
    assert loss.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(loss, expected)
    parameters = list(model.parameters())
    grads, expected_grads = torch.autograd.grad(loss, parameters), torch.autograd.grad(expected, parameters)
    assert all(grad.dtype == torch.float32 for grad in grads)
    torch.testing.assert_close(grads, expected_grads)


def _native_linear_cross_entropy(input, linear_weight, target, linear_bias=None, **options):
    return F.cross_entropy(F.linear(input, linear_weight, linear_bias), target, **options)


@pytest.mark.parametrize("device, dtype", DEVICES_AND_DTYPES)
@pytest.mark.parametrize("kind", ["index", "probability"])
def test_linear_cross_entropy_follows_f_linear_then_f_cross_entropy(device, dtype, kind):
    """The GEMMs in the autocast dtype (F.linear), a float32 loss (F.cross_entropy); float32 gradients."""
    input, weight, bias = _parameters(device, (12, 8), (40, 8), (40,))
    if kind == "index":
        target = torch.randint(0, 40, (12,), device=device)
    else:
        target = torch.rand(12, 40, device=device).softmax(-1)
    class_weight = torch.rand(40, device=device) + 0.5
    options = dict(weight=class_weight, label_smoothing=0.1)
    results = []
    for fn in (linear_cross_entropy, _native_linear_cross_entropy):
        with torch.autocast(device, dtype=dtype):
            loss = fn(input, weight, target, linear_bias=bias, **options)
        results.append((loss, *torch.autograd.grad(loss, (input, weight, bias))))
    for ours, native in zip(*results):
        assert ours.dtype == native.dtype == torch.float32
        torch.testing.assert_close(ours, native, **TOLERANCES[dtype])


@pytest.mark.parametrize("device, dtype", DEVICES_AND_DTYPES)
def test_linear_cross_entropy_float64_is_not_cast(device, dtype):
    input, weight = _parameters(device, (6, 4), (9, 4), dtype=torch.float64)
    target = torch.randint(0, 9, (6,), device=device)
    with torch.autocast(device, dtype=dtype):
        loss = linear_cross_entropy(input, weight, target)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, _native_linear_cross_entropy(input, weight, target))
