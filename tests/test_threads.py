"""Concurrency and determinism of the CPU ops.

* 16 Python threads calling the ops at once get bitwise the results of serial calls.
* Repeated calls are bitwise identical.
* 1 and 2 intra-op threads (torch.set_num_threads) agree within rounding; bitwise for everything that the
  kernels reduce in a fixed order: all of SoftmaxCrossEntropy (loss, max_logit, log_sum, normalizer, gradients),
  LinearSigmoid's grad_z and the gradient of a bias of shape (out,). Not bitwise: results of the GEMMs
  (MKL's sgemm splits its work by the thread count, so float32 x @ W^T, dz @ W and dz^T @ x may differ in
  the last bits) and the gradient of a bias that is not one row (ATen's sum_to, whose reduction order
  follows the thread count).
"""
import threading

import pytest
import torch

from torch_manualbp.functional import linear_sigmoid, softmax_cross_entropy

_ops = torch.ops.torch_manualbp
THREADS = 16

# Big enough that at::parallel_for and the GEMMs split the work (rows * out > 32768 elements).
SHAPES = [((512, 96), 80), ((3, 70, 33), 257), ((33,), 5), ((1000, 8), 64)]


def _linear_sigmoid_case(seed, dtype=torch.float32, bias_shape="row"):
    generator = torch.Generator().manual_seed(seed)
    input_shape, out_features = SHAPES[seed % len(SHAPES)]
    x = torch.randn(input_shape, generator=generator).to(dtype)
    weight = torch.randn(out_features, input_shape[-1], generator=generator).to(dtype)
    output_shape = (*input_shape[:-1], out_features)
    bias = torch.randn(out_features if bias_shape == "row" else output_shape, generator=generator).to(dtype)
    grad_output = torch.randn(output_shape, generator=generator).to(dtype)
    return x, weight, bias, grad_output


def _linear_sigmoid_results(case):
    """y and the three gradients through autograd, plus the backward op called on its own."""
    x, weight, bias, grad_output = case
    leaves = [t.detach().requires_grad_() for t in (x, weight, bias)]
    y = linear_sigmoid(*leaves)
    grads = torch.autograd.grad(y, leaves, grad_output)
    return (y.detach(), *grads)


def _backward_op_results(case):
    """The backward op alone, from a fixed y: no GEMM upstream of grad_z and of the fused bias sum."""
    x, weight, bias, grad_output = case
    y = torch.sigmoid(torch.nn.functional.linear(x, weight, bias))
    return _ops.linear_sigmoid_backward(grad_output, x, weight, y, list(bias.shape), [True, True, True])


def _bitwise_equal(a, b):
    return all(torch.equal(p, q) for p, q in zip(a, b))


def _run_in_threads(fn, cases, repeats=3):
    """fn(case) for every case, from THREADS threads started together, each `repeats` times."""
    barrier = threading.Barrier(len(cases))
    results = [[] for _ in cases]
    errors = []

    def work(i):
        try:
            barrier.wait()
            for _ in range(repeats):
                results[i].append(fn(cases[i]))
        except BaseException as error:  # noqa: BLE001 (re-raised in the main thread)
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("bias_shape", ["row", "full"])
def test_linear_sigmoid_from_16_threads_matches_serial_bitwise(dtype, bias_shape):
    cases = [_linear_sigmoid_case(seed, dtype, bias_shape) for seed in range(THREADS)]
    serial = [_linear_sigmoid_results(case) for case in cases]
    threaded = _run_in_threads(_linear_sigmoid_results, cases)
    for i, runs in enumerate(threaded):
        for run in runs:
            assert _bitwise_equal(run, serial[i]), f"thread {i} differs from the serial result"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_sigmoid_repeated_runs_are_bitwise_identical(dtype):
    for seed in range(len(SHAPES)):
        case = _linear_sigmoid_case(seed, dtype, "row")
        first = _linear_sigmoid_results(case)
        for _ in range(10):
            assert _bitwise_equal(_linear_sigmoid_results(case), first)


@pytest.fixture
def restore_num_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _with_threads(count, fn, case):
    torch.set_num_threads(count)
    return fn(case)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_linear_sigmoid_one_and_two_intra_op_threads_agree(dtype, restore_num_threads):
    tolerance = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 2e-2}[dtype]
    for seed in range(len(SHAPES)):
        for bias_shape in ("row", "full"):
            case = _linear_sigmoid_case(seed, dtype, bias_shape)
            one, two = (_with_threads(n, _linear_sigmoid_results, case) for n in (1, 2))
            for a, b in zip(one, two):
                torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_linear_sigmoid_fused_bias_grad_is_bitwise_independent_of_threads(dtype, restore_num_threads):
    # grad_z and its column sums (the gradient of a bias of shape (out,)) are summed per fixed block of
    # 32 rows, then over blocks in order: the same additions whatever the thread count.
    for seed in range(len(SHAPES)):
        case = _linear_sigmoid_case(seed, dtype, "row")
        one, two = (_with_threads(n, _backward_op_results, case) for n in (1, 2))
        assert torch.equal(one[2], two[2])


def test_linear_sigmoid_forward_epilogue_is_bitwise_independent_of_threads(restore_num_threads):
    # With a GEMM that is itself exact (small integers), y depends only on the elementwise pass.
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 4, (700, 64), generator=generator).float()
    weight = torch.randint(-3, 4, (96, 64), generator=generator).float() / 8
    bias = torch.randn(96, generator=generator)
    one, two = (_with_threads(n, lambda c: linear_sigmoid(*c), (x, weight, bias)) for n in (1, 2))
    assert torch.equal(one, two)


# ---- SoftmaxCrossEntropy: no GEMM, every reduction in a fixed order -> bitwise everywhere ----------------
# (input shape, target kind, reduction, label smoothing, weighted): rows and spatial layouts, big enough to
# split into many loss blocks and parallel chunks.
CE_CASES = [
    ((4096, 40), "index", "mean", 0.0, False),
    ((300, 129), "index", "sum", 0.1, True),
    ((64, 10, 33, 17), "index", "mean", 0.2, True),
    ((8, 7, 1000), "probability", "mean", 0.0, False),
    ((700, 64), "probability", "none", 0.3, True),
    ((4, 3000, 9), "index", "none", 0.0, False),
    ((50000,), "index", "mean", 0.1, True),
]


def _cross_entropy_case(i, dtype=torch.float32):
    shape, kind, reduction, smoothing, weighted = CE_CASES[i % len(CE_CASES)]
    generator = torch.Generator().manual_seed(i)
    class_dim = 0 if len(shape) == 1 else 1
    classes = shape[class_dim]
    positions = shape[:class_dim] + shape[class_dim + 1 :]
    x = (torch.randn(shape, generator=generator) * 4).to(dtype)
    if kind == "index":
        target = torch.randint(0, classes, positions, generator=generator)
        target[torch.rand(positions, generator=generator) < 0.1] = -100
    else:
        target = torch.rand(shape, generator=generator).to(dtype)
    weight = (torch.rand(classes, generator=generator) + 0.1).to(dtype) if weighted else None
    grad_loss = torch.randn(positions if reduction == "none" else (), generator=generator).to(dtype)
    options = dict(weight=weight, reduction=reduction, label_smoothing=smoothing)
    return x, target, options, grad_loss


def _cross_entropy_results(case):
    """Loss, max_logit, log_sum and normalizer of the forward op, and the gradients of input (and target)."""
    x, target, options, grad_loss = case
    forward = _ops.softmax_cross_entropy_forward(
        x, target, options["weight"], options["reduction"], -100, options["label_smoothing"]
    )
    leaves = [x.detach().requires_grad_(), target.detach().requires_grad_(target.is_floating_point())]
    loss = softmax_cross_entropy(*leaves, **options)
    grads = torch.autograd.grad(loss, [t for t in leaves if t.requires_grad], grad_loss)
    return (*forward, *grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_from_16_threads_matches_serial_bitwise(dtype):
    cases = [_cross_entropy_case(i, dtype) for i in range(THREADS)]
    serial = [_cross_entropy_results(case) for case in cases]
    threaded = _run_in_threads(_cross_entropy_results, cases)
    for i, runs in enumerate(threaded):
        for run in runs:
            assert _bitwise_equal(run, serial[i]), f"thread {i} differs from the serial result"


def test_cross_entropy_repeated_runs_are_bitwise_identical():
    for i in range(len(CE_CASES)):
        case = _cross_entropy_case(i)
        first = _cross_entropy_results(case)
        for _ in range(5):
            assert _bitwise_equal(_cross_entropy_results(case), first)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cross_entropy_is_bitwise_independent_of_intra_op_threads(dtype, restore_num_threads):
    for i in range(len(CE_CASES)):
        case = _cross_entropy_case(i, dtype)
        one, two = (_with_threads(n, _cross_entropy_results, case) for n in (1, 2))
        assert _bitwise_equal(one, two), f"case {CE_CASES[i]}"
