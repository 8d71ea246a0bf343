"""torch.library.opcheck on every registered op: the schema (no aliasing or mutation of inputs), the
autograd registration, the fake kernels against the real ones, and AOTAutograd tracing with dynamic
shapes. float32 and float64, with and without requires_grad, contiguous and not, empty batches; on the
CPU, and on CUDA where a GPU is present (the same cases; the arguments from tests/op_args.py).

The first three checks take milliseconds and run on the full product of cases and variants; the
AOTAutograd check takes most of a second per call and runs on every case once, with the variants
(dtype, requires_grad, contiguity, output_mask) rotating over the cases so that each one is covered.
"""
import pytest
import torch

from torch_manualbp._compat import TRACED_FUNCTORCH_SUPPORTED
from op_args import (
    DEVICES,
    linear_cross_entropy_backward_args,
    linear_cross_entropy_forward_args,
    linear_sigmoid_backward_args,
    linear_sigmoid_forward_args,
    ops,
    softmax_cross_entropy_backward_args,
    softmax_cross_entropy_forward_args,
)

FAST_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor")
AOT_CHECK = "test_aot_dispatch_dynamic"
# (dtype, requires_grad, contiguous): every pair of two of the three variants occurs.
VARIANTS = [
    (torch.float32, False, True),
    (torch.float32, True, False),
    (torch.float64, True, True),
    (torch.float64, False, False),
]
VARIANT_IDS = ["f32-nograd-contiguous", "f32-grad-strided", "f64-grad-contiguous", "f64-nograd-strided"]


def _rotating(cases, *variant_lists):
    """Each case once, with the i-th entry (cyclically) of every variant list."""
    return [(case, *(variants[i % len(variants)] for variants in variant_lists)) for i, case in enumerate(cases)]


# (input shape, out_features, bias shape or None)
LINEAR_SIGMOID_CASES = [
    ((4, 3), 5, (5,)),
    ((4, 3), 5, None),
    ((2, 3, 4), 6, (6,)),
    ((4, 3), 5, (4, 5)),  # a per-sample bias
    ((2, 4, 3), 5, (1, 5)),  # a bias broadcast along the first dim only
    ((3,), 5, (5,)),  # a 1-D input: no leading dims
    ((0, 3), 5, (5,)),  # an empty batch
    ((2, 0, 3), 5, (5,)),
    ((4, 0), 5, (5,)),  # no input features: z = bias
    ((2, 3, 4), 5, (3, 1)),  # a bias whose broadcast leading dims do not collapse into one
]
OUTPUT_MASKS = [[True, True, True], [True, False, False], [False, True, True], [False, False, True]]


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("case", LINEAR_SIGMOID_CASES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_linear_sigmoid_forward(case, variant, device):
    args = linear_sigmoid_forward_args(case, *variant, device=device)
    torch.library.opcheck(ops.linear_sigmoid_forward.default, args, test_utils=FAST_CHECKS)


@pytest.mark.parametrize("output_mask", OUTPUT_MASKS, ids=str)
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("case", LINEAR_SIGMOID_CASES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_linear_sigmoid_backward(case, variant, output_mask, device):
    args = linear_sigmoid_backward_args(case, *variant, output_mask, device=device)
    torch.library.opcheck(ops.linear_sigmoid_backward.default, args, test_utils=FAST_CHECKS)


@pytest.mark.parametrize("case, variant", _rotating(LINEAR_SIGMOID_CASES, VARIANTS), ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_linear_sigmoid_forward_aot(case, variant, device):
    args = linear_sigmoid_forward_args(case, *variant, device=device)
    torch.library.opcheck(ops.linear_sigmoid_forward.default, args, test_utils=AOT_CHECK)


@pytest.mark.parametrize(
    "case, variant, output_mask", _rotating(LINEAR_SIGMOID_CASES, VARIANTS, OUTPUT_MASKS[:3]), ids=str
)
@pytest.mark.parametrize("device", DEVICES)
def test_linear_sigmoid_backward_aot(case, variant, output_mask, device):
    args = linear_sigmoid_backward_args(case, *variant, output_mask, device=device)
    torch.library.opcheck(ops.linear_sigmoid_backward.default, args, test_utils=AOT_CHECK)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_linear_sigmoid_backward_broadcast_grad_output(dtype, device):
    """A grad_output that broadcasts to the output (e.g. the expanded gradient of a sum)."""
    input, weight, bias = linear_sigmoid_forward_args(((4, 3), 5, (5,)), dtype, True, True, device)
    with torch.no_grad():
        output = ops.linear_sigmoid_forward(input, weight, bias)
    grad_output = torch.randn(5, dtype=dtype, device=device, requires_grad=True)
    args = (grad_output, input, weight, output.requires_grad_(), [5], [True, True, True])
    torch.library.opcheck(ops.linear_sigmoid_backward.default, args)


# (input shape, target kind, reduction, weight, ignore_index, label_smoothing[, lse_square_scale, softcap])
SOFTMAX_CROSS_ENTROPY_CASES = [
    ((4, 5), "index", "mean", False, -100, 0.0),
    ((4, 5), "index", "sum", True, 2, 0.1),
    ((4, 5), "index", "none", True, -100, 0.0),
    ((4, 5), "probability", "mean", True, -100, 0.2),
    ((4, 5), "probability", "none", False, -100, 0.0),
    ((5,), "index", "mean", True, -100, 0.1),  # one position, no batch dim
    ((5,), "probability", "sum", False, -100, 0.0),
    ((2, 5, 3, 2), "index", "mean", True, 1, 0.0),  # (N, C, d1, d2)
    ((2, 5, 3), "probability", "none", True, -100, 0.3),
    ((2, 5, 3), "uint8", "sum", False, -100, 0.0),
    ((0, 5), "index", "sum", False, -100, 0.0),  # an empty batch
    ((0, 5), "probability", "none", True, -100, 0.0),
    ((2, 5, 0), "index", "none", False, -100, 0.0),
    ((3, 1500), "probability", "mean", True, -100, 0.1),  # CUDA: a block per row
    ((2, 64, 3), "index", "sum", True, -100, 0.1),  # CUDA: each position's classes split over threads
    # (..., lse_square_scale, softcap): the z-loss and the softcap, alone and together, in every layout
    ((4, 5), "index", "mean", True, 2, 0.1, 0.05, 2.0),
    ((4, 5), "probability", "none", False, -100, 0.0, 0.1, None),
    ((5,), "index", "sum", False, -100, 0.0, 0.0, 1.5),
    ((2, 5, 3), "index", "mean", True, -100, 0.0, 0.0, 1.5),
    ((2, 5, 3), "probability", "mean", True, -100, 0.2, 0.01, 3.0),
    ((3, 1500), "index", "mean", False, -100, 0.0, 0.02, 5.0),
    ((4, 200), "uint8", "mean", False, -100, 0.0, 0.02, None),
    ((2, 64, 3), "index", "mean", True, 1, 0.1, 0.02, 5.0),
    ((0, 5), "probability", "sum", False, -100, 0.0, 0.1, 1.0),  # (an empty 'mean' is NaN: opcheck's AOT check fails on NaN)
]
CE_OUTPUT_MASKS = [[True, True], [True, False], [False, True], [False, False]]


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("case", SOFTMAX_CROSS_ENTROPY_CASES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_softmax_cross_entropy_forward(case, variant, device):
    args = softmax_cross_entropy_forward_args(case, *variant, device=device)
    torch.library.opcheck(ops.softmax_cross_entropy_forward.default, args, test_utils=FAST_CHECKS)


@pytest.mark.parametrize("output_mask", CE_OUTPUT_MASKS, ids=str)
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("case", SOFTMAX_CROSS_ENTROPY_CASES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_softmax_cross_entropy_backward(case, variant, output_mask, device):
    args = softmax_cross_entropy_backward_args(case, *variant, output_mask, device=device)
    torch.library.opcheck(ops.softmax_cross_entropy_backward.default, args, test_utils=FAST_CHECKS)


@pytest.mark.parametrize("case, variant", _rotating(SOFTMAX_CROSS_ENTROPY_CASES, VARIANTS), ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_softmax_cross_entropy_forward_aot(case, variant, device):
    args = softmax_cross_entropy_forward_args(case, *variant, device=device)
    torch.library.opcheck(ops.softmax_cross_entropy_forward.default, args, test_utils=AOT_CHECK)


@pytest.mark.parametrize(
    "case, variant, output_mask", _rotating(SOFTMAX_CROSS_ENTROPY_CASES, VARIANTS, CE_OUTPUT_MASKS[:3]), ids=str
)
@pytest.mark.parametrize("device", DEVICES)
def test_softmax_cross_entropy_backward_aot(case, variant, output_mask, device):
    args = softmax_cross_entropy_backward_args(case, *variant, output_mask, device=device)
    torch.library.opcheck(ops.softmax_cross_entropy_backward.default, args, test_utils=AOT_CHECK)


# (token shape, in_features, classes, target kind, reduction, bias, class weight, options)
LINEAR_CROSS_ENTROPY_CASES = [
    ((5,), 3, 7, "index", "mean", True, False, {}),
    ((2, 3), 4, 6, "index", "none", False, True, dict(label_smoothing=0.1)),
    ((6,), 3, 5, "uint8", "sum", True, True, dict(softcap=2.0, lse_square_scale=0.1, chunk_budget=1)),
    ((4,), 3, 5, "probability", "mean", True, False, dict(label_smoothing=0.2)),
    ((2, 2), 3, 4, "probability", "none", False, False, dict(softcap=3.0)),
    ((), 3, 5, "index", "sum", False, False, {}),
    ((0,), 3, 5, "index", "sum", True, False, {}),  # (an empty mean is NaN, which opcheck compares unequal)
]
LCE_GRAD_MASKS = [[True, True, True], [False, True, False], [False, False, False]]
LCE_OUTPUT_MASKS = [[True, True, True, True], [True, False, False, False], [False, True, True, False]]


def _grad_mask(case, grad_mask):
    return grad_mask if case[4] != "none" else [False] * 3


@pytest.mark.parametrize("grad_mask", LCE_GRAD_MASKS, ids=str)
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("case", LINEAR_CROSS_ENTROPY_CASES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_linear_cross_entropy_forward(case, variant, grad_mask, device):
    args = linear_cross_entropy_forward_args(case, *variant, _grad_mask(case, grad_mask), device=device)
    torch.library.opcheck(ops.linear_cross_entropy_forward.default, args, test_utils=FAST_CHECKS)


@pytest.mark.parametrize("output_mask", LCE_OUTPUT_MASKS, ids=str)
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("case", LINEAR_CROSS_ENTROPY_CASES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_linear_cross_entropy_backward(case, variant, output_mask, device):
    args = linear_cross_entropy_backward_args(case, *variant, output_mask, device=device)
    torch.library.opcheck(ops.linear_cross_entropy_backward.default, args, test_utils=FAST_CHECKS)


@pytest.mark.parametrize(
    "case, variant, grad_mask", _rotating(LINEAR_CROSS_ENTROPY_CASES, VARIANTS, LCE_GRAD_MASKS), ids=str
)
@pytest.mark.parametrize("device", DEVICES)
def test_linear_cross_entropy_forward_aot(case, variant, grad_mask, device):
    args = linear_cross_entropy_forward_args(case, *variant, _grad_mask(case, grad_mask), device=device)
    torch.library.opcheck(ops.linear_cross_entropy_forward.default, args, test_utils=AOT_CHECK)


@pytest.mark.parametrize(
    "case, variant, output_mask", _rotating(LINEAR_CROSS_ENTROPY_CASES, VARIANTS, LCE_OUTPUT_MASKS), ids=str
)
@pytest.mark.parametrize("device", DEVICES)
def test_linear_cross_entropy_backward_aot(case, variant, output_mask, device):
    args = linear_cross_entropy_backward_args(case, *variant, output_mask, device=device)
    if TRACED_FUNCTORCH_SUPPORTED:
        torch.library.opcheck(ops.linear_cross_entropy_backward.default, args, test_utils=AOT_CHECK)
        return
    # Older torch: the double backward's torch.func under AOT tracing is refused (torch 2.4 crashed there).
    try:
        torch.library.opcheck(ops.linear_cross_entropy_backward.default, args, test_utils=AOT_CHECK)
    except Exception as error:
        chain = []
        while error is not None:
            chain.append(str(error))
            error = error.__cause__ or error.__context__
        assert any("needs torch 2.8 or newer" in message for message in chain), chain


# ---- the vocab-parallel ops: a rank's block of the classes (class_offset, total_classes) ----------------
# Called inside the vocab-parallel autograd Functions, never differentiated themselves: no autograd
# registration, so the inputs do not require grad. (block, target kind, options)
def _vocab_parallel_args(kind, dtype, device, contiguous, linear):
    g = torch.Generator().manual_seed(3)
    N, C_r, D, offset, total = 5, 4, 3, 6, 13
    logits = torch.randn(N, C_r + 2, generator=g).to(dtype)[:, 1:-1] if not contiguous else torch.randn(N, C_r, generator=g).to(dtype)
    x = torch.randn(N, D, generator=g).to(dtype)
    W = torch.randn(C_r, D, generator=g).to(dtype)
    b = torch.randn(C_r, generator=g).to(dtype)
    if kind == "probability":
        target = torch.rand(N, C_r, generator=g).to(dtype)
    else:
        target = torch.tensor([0, 7, -100, 12, 9])
    weight = torch.rand(C_r, generator=g).to(dtype) + 0.5
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    given = torch.randn(N, 4, generator=g).to(acc)
    scale = torch.rand(N, generator=g).to(acc)
    to = lambda t: t.to(device)  # noqa: E731
    if linear:
        return (
            (to(x), to(W), to(b), to(target), to(weight), -100, 0.1, 4.0, offset, total, 4 * C_r * 2),
            (to(x), to(W), to(b), to(target), to(weight), to(given), to(scale), to(scale), -100, 0.1, 0.01, 4.0, offset,
             total, [True, True, True, kind == "probability"], 4 * C_r * 2),
        )
    return (
        (to(logits), to(target), to(weight), -100, 0.1, 4.0, offset, total),
        (to(logits), to(target), to(weight), to(given), to(scale), to(scale), -100, 0.1, 0.01, 4.0, offset, total,
         [True, kind == "probability"]),
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["index", "probability"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("linear", [False, True], ids=["logits", "linear"])
def test_vocab_parallel_ops(kind, dtype, linear, device):
    statistics_args, gradient_args = _vocab_parallel_args(kind, dtype, device, dtype == torch.float32, linear)
    prefix = "vocab_parallel_linear_cross_entropy" if linear else "vocab_parallel_cross_entropy"
    for op, args in ((getattr(ops, f"{prefix}_statistics").default, statistics_args),
                     (getattr(ops, f"{prefix}_gradient").default, gradient_args)):
        torch.library.opcheck(op, args, test_utils=FAST_CHECKS + ((AOT_CHECK,) if dtype == torch.float64 else ()))
