"""A class index outside [0, C) that is not ignore_index is refused by every op that reads one, forward and
backward, called directly (no Python wrapper in front), in every layout and target dtype: an IndexError naming
the index, as torch's, before anything is read or written at it. Without the check a backward would write
the target's term into another position's gradient, or past the end of its buffer (`make sanitize` runs this
file with AddressSanitizer; `make test-simd` at every SIMD level, since each level's kernels check).
"""
import pytest
import torch

ops = torch.ops.torch_manualbp

# SoftmaxCrossEntropy layouts: (C,) and (N, C) are rows (one position per row), (N, C, d1, ...) spatial,
# spatial_lanes(C) positions per chunk (16 to 256): the bad position sits in a later chunk than the first.
CE_SHAPES = {"1-D": (6,), "rows": (5, 6), "spatial": (2, 6, 300), "spatial 2-D": (2, 6, 17, 19)}
# (target dtype, bad index): past the end, far past it, negative (not ignore_index); uint8 cannot be negative.
BAD_INDICES = [
    (torch.int64, 6), (torch.int64, 1 << 40), (torch.int64, -1), (torch.int64, -101),
    (torch.uint8, 6), (torch.uint8, 254),
]
BAD_IDS = [f"{str(dtype).split('.')[1]} {index}" for dtype, index in BAD_INDICES]
# Each path of the kernels that reads the target: no smoothing (the target's logit only), smoothing (every
# class), class weights (weight[t]); float32 in place, bfloat16 through a float buffer.
CE_OPTIONS = [
    dict(dtype=torch.float32, weighted=False, label_smoothing=0.0),
    dict(dtype=torch.float32, weighted=True, label_smoothing=0.1),
    dict(dtype=torch.bfloat16, weighted=True, label_smoothing=0.0),
]
CE_OPTION_IDS = ["float32", "float32 weighted smoothed", "bfloat16 weighted"]


def _cross_entropy_args(shape, index_dtype, bad_index, dtype, weighted, label_smoothing, reduction):
    """Forward arguments whose target holds `bad_index` at its last position, and the statistics of the same
    problem with a valid target there (for the backward op)."""
    classes = shape[0 if len(shape) == 1 else 1]
    positions = shape[1:] if len(shape) == 1 else shape[:1] + shape[2:]
    x = torch.randn(shape).to(dtype)
    good = torch.randint(0, classes, positions, generator=torch.Generator().manual_seed(0)).to(index_dtype)
    bad = good.clone()
    bad.view(-1)[-1] = bad_index
    weight = (torch.rand(classes) + 0.5).to(dtype) if weighted else None
    options = (reduction, -100, label_smoothing)
    loss, max_logit, log_sum, normalizer = ops.softmax_cross_entropy_forward(x, good, weight, *options)
    grad_loss = torch.ones_like(loss)
    return x, bad, weight, options, (grad_loss, max_logit, log_sum, normalizer)


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("options", CE_OPTIONS, ids=CE_OPTION_IDS)
@pytest.mark.parametrize("index_dtype,bad_index", BAD_INDICES, ids=BAD_IDS)
@pytest.mark.parametrize("layout", list(CE_SHAPES))
def test_softmax_cross_entropy_ops_refuse_an_out_of_range_class_index(layout, index_dtype, bad_index, options,
                                                                      reduction):
    x, bad, weight, loss_options, (grad_loss, max_logit, log_sum, normalizer) = _cross_entropy_args(
        CE_SHAPES[layout], index_dtype, bad_index, reduction=reduction, **options)
    message = f"Target {bad_index} is out of bounds."
    with pytest.raises(IndexError, match=message):
        ops.softmax_cross_entropy_forward(x, bad, weight, *loss_options)
    with pytest.raises(IndexError, match=message):
        ops.softmax_cross_entropy_backward(
            grad_loss, x, bad, weight, max_logit, log_sum, normalizer, *loss_options, [True, False])


@pytest.mark.parametrize("layout", list(CE_SHAPES))
def test_softmax_cross_entropy_ignore_index_is_not_checked(layout):
    """ignore_index itself, out of range (-100, or 255 in uint8), is skipped, not refused."""
    for index_dtype, ignore_index in ((torch.int64, -100), (torch.uint8, 255), (torch.int64, 1 << 40)):
        x, target, _, _, stats = _cross_entropy_args(
            CE_SHAPES[layout], index_dtype, 0, torch.float32, False, 0.0, "none")
        target.view(-1)[-1] = ignore_index
        loss, max_logit, log_sum, normalizer = ops.softmax_cross_entropy_forward(x, target, None, "none", ignore_index, 0.0)
        assert loss.view(-1)[-1] == 0
        grad, _ = ops.softmax_cross_entropy_backward(
            torch.ones_like(loss), x, target, None, max_logit, log_sum, normalizer, "none", ignore_index, 0.0,
            [True, False])
        class_dim = 0 if x.dim() == 1 else 1
        assert (grad.movedim(class_dim, -1).reshape(-1, x.shape[class_dim])[-1] == 0).all()


# LinearCrossEntropy: tokens are rows; its ops check the targets before any GEMM (forward and backward op).
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("index_dtype,bad_index", BAD_INDICES, ids=BAD_IDS)
def test_linear_cross_entropy_ops_refuse_an_out_of_range_class_index(index_dtype, bad_index, reduction):
    x, w = torch.randn(2, 3, 4), torch.randn(6, 4)
    target = torch.randint(0, 6, (2, 3)).to(index_dtype)
    target[-1, -1] = bad_index
    options = (None, reduction, -100, 0.1, 0.0, None)
    message = f"Target {bad_index} is out of bounds."
    with pytest.raises(IndexError, match=message):
        ops.linear_cross_entropy_forward(x, w, None, target, *options, [reduction != "none"] * 2 + [False], 1 << 20)
    grad_loss = torch.ones(2, 3) if reduction == "none" else torch.ones(())
    with pytest.raises(IndexError, match=message):
        ops.linear_cross_entropy_backward(grad_loss, x, w, None, target, *options, [True, True, False, False], 64)
