"""Fixed cases at the edges of every blocking the CPU kernels use, so that a bug in a partial block or chunk
fails on every run instead of when a random search happens to draw the size:

  LinearSigmoid (cpu/linear_sigmoid_kernel.cpp)             bfloat16/float16 rows converted to float in chunks
                                                            of 256 (kConvertChunk); the bias gradient summed
                                                            per block of 32 rows (kBiasGradBlockRows), the
                                                            blocks pairwise
  SoftmaxCrossEntropy rows (cpu/softmax_cross_entropy_rows_kernel.cpp)
                                                            a row in blocks of 2048 classes (kRowBlock); the
                                                            loss summed per 16 rows (kRowsPerLossBlock)
  SoftmaxCrossEntropy spatial (cpu/softmax_cross_entropy_spatial_kernel.cpp)
                                                            chunks of spatial_lanes(C) positions, C x lanes
                                                            <= 4096 elements (kSpatialChunkElements)
  LinearCrossEntropy (cpu/linear_cross_entropy_kernel.cpp, linear_cross_entropy.cpp)
                                                            a probability row and the gradient in blocks of
                                                            1024 classes (kTargetBlock); tokens in chunks of
                                                            chunk_budget bytes of logits

each size one below, at and one above an edge (and past two blocks), so that the last SIMD vector of a block
is partial too. `make test-simd` runs this file at every SIMD level.
"""
import pytest
import torch
import torch.nn.functional as F
from hypothesis_tensors import assert_close_to_bound

from torch_manualbp.functional import linear_cross_entropy, linear_sigmoid, softmax_cross_entropy

REDUCED = (torch.bfloat16, torch.float16)
EPS = {dtype: torch.finfo(dtype).eps for dtype in (torch.float32, torch.float64, *REDUCED)}


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def _randn(shape, dtype, scale=1.0, seed=0):
    """Normal values drawn in float64 and rounded once to dtype."""
    return (torch.randn(shape, generator=_generator(seed), dtype=torch.float64) * scale).to(dtype)


# ---- LinearSigmoid ------------------------------------------------------------------------------------
# With the weight an identity matrix the GEMMs are exact (z = x, dx = dz), so y and dz, the elementwise
# kernels' work, can be checked to a rounding of the dtype: a block computed with another block's values
# or left out is off by O(1).


def _linear_sigmoid_case(rows, features, dtype, bias):
    x = _randn((rows, features), dtype, 3.0, seed=1)
    weight = torch.eye(features, dtype=dtype)
    b = _randn((features,), dtype, seed=2) if bias else None
    grad_output = _randn((rows, features), dtype, seed=3)
    return x, weight, b, grad_output


def _check_linear_sigmoid(rows, features, dtype, bias):
    x, weight, b, grad_output = _linear_sigmoid_case(rows, features, dtype, bias)
    leaves = [t.detach().requires_grad_() for t in (x, weight)] + ([b.requires_grad_()] if bias else [None])
    y = linear_sigmoid(*leaves)
    grad_x, grad_w, *grad_b = torch.autograd.grad(y, [t for t in leaves if t is not None], grad_output)

    acc = torch.float64 if dtype == torch.float64 else torch.float32  # what the kernels compute in
    z = x.to(acc) if b is None else x.to(acc) + b.to(acc)
    expected_y = torch.sigmoid(z).to(dtype)
    torch.testing.assert_close(y, expected_y, rtol=0, atol=EPS[dtype])
    y_acc = y.detach().to(acc)
    grad_z = grad_output.to(acc) * y_acc * (1 - y_acc)
    torch.testing.assert_close(grad_x, grad_z.to(dtype), rtol=EPS[dtype], atol=EPS[dtype] * 1e-3)
    grad_z_rounded = grad_z.to(dtype).double()
    assert_close_to_bound(
        grad_w, (grad_z_rounded.t() @ x.double()).to(dtype), grad_z_rounded.abs().t() @ x.double().abs(), dtype
    )
    if bias:
        # Summed in acc per block of 32 rows, then pairwise over the blocks; rounded to dtype once.
        exact = grad_z.double().sum(0)
        rounding = EPS[dtype] * exact.abs() if dtype != acc else 0
        tolerance = rounding + 64 * EPS[acc] * grad_z.double().abs().sum(0)
        error = (grad_b[0].double() - exact).abs()
        assert (error <= tolerance).all(), f"bias gradient off by {float(error.max()):.3g} at {int(error.argmax())}"


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("features", [255, 256, 257, 300, 513])
@pytest.mark.parametrize("dtype", REDUCED, ids=str)
def test_linear_sigmoid_reduced_precision_chunk_edges(dtype, features, bias):
    """out_features around the 256-element conversion chunk of bfloat16/float16 rows."""
    _check_linear_sigmoid(5, features, dtype, bias)


@pytest.mark.parametrize("rows", [1, 31, 32, 33, 64, 65, 97, 161, 229, 1000])
@pytest.mark.parametrize("dtype,features", [(torch.float32, 37), (torch.float64, 19), (torch.bfloat16, 300)], ids=str)
def test_linear_sigmoid_bias_gradient_row_block_edges(dtype, features, rows):
    """Row counts around the 32-row blocks of the fused bias gradient, and block counts 1 to 32 for the
    pairwise sum of the blocks (odd counts leave a block without a partner); 1000 rows of 300 features are
    split over threads."""
    _check_linear_sigmoid(rows, features, dtype, True)


# ---- cross-entropy: the reference and the tolerance -----------------------------------------------------
# F.cross_entropy in float64 on the same (rounded) values. Tolerance relative to the largest value of each
# result: about twice the dtype's rounding for bfloat16/float16 (the kernels accumulate in float32).
TOL = {torch.float32: 2e-5, torch.float64: 1e-12, torch.bfloat16: 2 * EPS[torch.bfloat16], torch.float16: 2 * EPS[torch.float16]}


def _loss_and_grads(fn, x, target, grad_output=None, **options):
    x = x.detach().clone().requires_grad_()
    target = target.detach().clone().requires_grad_(target.is_floating_point())
    loss = fn(x, target, **options)
    if grad_output is None:
        grad_output = torch.linspace(-1, 2, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    inputs = [x, target] if target.requires_grad else [x]
    return (loss.detach(), *torch.autograd.grad(loss, inputs, grad_output))


def _assert_cross_entropy_matches(x, target, **options):
    ours = _loss_and_grads(softmax_cross_entropy, x, target, **options)
    exact_target = target.double() if target.is_floating_point() else target.long()
    weight = options.get("weight")
    exact_options = dict(options, weight=None if weight is None else weight.double())
    grad_output = torch.linspace(-1, 2, ours[0].numel(), dtype=torch.float64).reshape(ours[0].shape)
    exact = _loss_and_grads(F.cross_entropy, x.double(), exact_target, grad_output, **exact_options)
    for name, got, expected in zip(("loss", "grad_input", "grad_target"), ours, exact):
        assert got.dtype == x.dtype, name
        finite = expected[expected.isfinite()]
        tol = TOL[x.dtype] * max(float(finite.abs().max()) if finite.numel() else 0.0, 1.0)
        torch.testing.assert_close(got.double(), expected, rtol=0, atol=tol, equal_nan=True,
                                   msg=lambda m: f"{name}: {m}")


def _probabilities(shape, dtype, class_dim, seed):
    """Class probabilities summing to 1 over the class dim (float16 sums of unnormalised rows overflow)."""
    p = torch.rand(shape, generator=_generator(seed), dtype=torch.float64)
    return (p / p.sum(class_dim, keepdim=True)).to(dtype)


# ---- SoftmaxCrossEntropy, rows: blocks of 2048 classes, 16 rows per loss block --------------------------
ROW_BLOCK = 2048


@pytest.mark.parametrize("kind", ["index", "probability"])
@pytest.mark.parametrize("classes", [ROW_BLOCK - 1, ROW_BLOCK, ROW_BLOCK + 1, 2 * ROW_BLOCK + 1])
@pytest.mark.parametrize("dtype", [torch.float32, *REDUCED], ids=str)
def test_cross_entropy_rows_class_block_edges(dtype, classes, kind):
    """Rows around one and two blocks of 2048 classes (the online logsumexp; bfloat16/float16 converted a
    block at a time; the gradient written a block at a time), the row's max and the target in the last
    block, the first, and on either side of the boundary; 17 rows: past one 16-row block of the loss."""
    rows = 17
    x = _randn((rows, classes), torch.float64, 3.0, seed=1)
    edge = min(ROW_BLOCK, classes - 1)
    x[0, -1] = x[1, edge] = x[2, ROW_BLOCK - 2] = 12.0  # the max after, at and before the boundary
    x[3, : classes - 2] = float("-inf")  # nothing finite before the last two classes
    x = x.to(dtype)
    if kind == "index":
        target = torch.randint(0, classes, (rows,), generator=_generator(2))
        target[:5] = torch.tensor([classes - 1, edge, ROW_BLOCK - 2, classes - 1, 0])
        target[6] = -100
    else:
        target = _probabilities((rows, classes), dtype, 1, seed=2)
    weight = (torch.rand(classes, generator=_generator(3), dtype=torch.float64) + 0.2).to(dtype)
    _assert_cross_entropy_matches(x, target, reduction="none")
    _assert_cross_entropy_matches(x, target, reduction="mean", weight=weight, label_smoothing=0.1)
    _assert_cross_entropy_matches(x, target, reduction="sum", label_smoothing=0.3)


# ---- SoftmaxCrossEntropy, spatial: chunks of spatial_lanes(C) positions ---------------------------------
SPATIAL_CHUNK_ELEMENTS = 4096


def spatial_lanes(classes):
    """Positions per chunk, as cpu/softmax_cross_entropy_kernel.h computes them."""
    return min(max(SPATIAL_CHUNK_ELEMENTS // classes // 16 * 16, 16), 256)


@pytest.mark.parametrize("offset", [-1, 0, 1, "2 chunks + 3"])
@pytest.mark.parametrize("classes", [5, 21, 129, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cross_entropy_spatial_chunk_edges(dtype, classes, offset):
    """(N, C, S) with S one below, at, one above one chunk of positions and past two chunks (C = 5: 256
    lanes, the most; 21: 192; 129 and 300: 16, the fewest, C x lanes past 4096), for index targets (int64
    and uint8) and probability targets; class 0 far below the max at a chunk's edge (its columns are swept
    again relative to their max) and an ignored position on the boundary."""
    lanes = spatial_lanes(classes)
    size = 2 * lanes + 3 if offset == "2 chunks + 3" else lanes + offset
    x = _randn((2, classes, size), torch.float64, 3.0, seed=1)
    x[:, 0, min(lanes, size - 1)] = -200.0
    x[1, 0, size - 1] = float("-inf")
    x = x.to(dtype)
    index = torch.randint(0, classes, (2, size), generator=_generator(2))
    index[0, -1] = classes - 1
    index[1, min(lanes, size - 1)] = -100
    weight = (torch.rand(classes, generator=_generator(3), dtype=torch.float64) + 0.2).to(dtype)
    targets = [index, _probabilities(x.shape, dtype, 1, seed=4)]
    if classes < 255:
        targets.append(torch.where(index < 0, 0, index).to(torch.uint8))
    for target in targets:
        _assert_cross_entropy_matches(x, target, reduction="none")
        _assert_cross_entropy_matches(x, target, reduction="mean", weight=weight, label_smoothing=0.2)


# ---- LinearCrossEntropy: blocks of 1024 classes, chunks of tokens ---------------------------------------
TARGET_BLOCK = 1024


def _linear_cross_entropy_reference(x, w, b, target, weight=None, reduction="mean", label_smoothing=0.0,
                                    softcap=None, lse_square_scale=0.0):
    logits = F.linear(x, w, b)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    kept = torch.ones(x.shape[0], dtype=torch.bool) if target.is_floating_point() else target != -100
    loss = F.cross_entropy(logits, target, weight=weight, reduction=reduction, label_smoothing=label_smoothing)
    z_loss = lse_square_scale * torch.logsumexp(logits, -1).square() * kept
    if reduction == "none":
        return loss + z_loss
    return loss + (z_loss.sum() / kept.sum() if reduction == "mean" else z_loss.sum())


@pytest.mark.parametrize("kind", ["index", "probability"])
@pytest.mark.parametrize("classes", [TARGET_BLOCK - 1, TARGET_BLOCK, TARGET_BLOCK + 1, 2 * TARGET_BLOCK + 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_linear_cross_entropy_class_block_and_token_chunk_edges(dtype, classes, kind):
    """Classes around one and two blocks of 1024 (probability rows converted, and the gradient written, a
    block at a time; the target's term in the last block and on either side of the boundary), and 9 tokens
    in chunks of 4 (chunk_budget: 4 tokens' logits), an ignored token at the end of the first chunk."""
    tokens, features = 9, 16
    x = _randn((tokens, features), dtype, seed=1)
    w = _randn((classes, features), dtype, 0.5, seed=2)
    b = _randn((classes,), dtype, seed=3)
    if kind == "index":
        target = torch.randint(0, classes, (tokens,), generator=_generator(4))
        target[:3] = torch.tensor([classes - 1, min(TARGET_BLOCK, classes - 1), TARGET_BLOCK - 2])
        target[3] = -100
    else:
        target = _probabilities((tokens, classes), dtype, 1, seed=4)
    weight = (torch.rand(classes, generator=_generator(5), dtype=torch.float64) + 0.2).to(dtype)
    budget = 4 * classes * x.element_size()
    for options in (
        dict(reduction="mean", weight=weight, label_smoothing=0.1),  # gradients computed in the forward
        dict(reduction="none", softcap=20.0, lse_square_scale=1e-3),  # the backward op recomputes the chunks
    ):
        leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
        t = target.detach().clone().requires_grad_(kind == "probability")
        loss = linear_cross_entropy(leaves[0], leaves[1], t, linear_bias=leaves[2], chunk_budget=budget, **options)
        grad_output = torch.linspace(-1, 2, loss.numel(), dtype=torch.float64).reshape(loss.shape)
        inputs = leaves + ([t] if t.requires_grad else [])
        ours = (loss.detach(), *torch.autograd.grad(loss, inputs, grad_output.to(dtype)))

        exact_leaves = [v.detach().double().requires_grad_() for v in inputs]
        exact_target = exact_leaves[3] if kind == "probability" else target
        exact_options = dict(options, weight=None if "weight" not in options else weight.double())
        exact_loss = _linear_cross_entropy_reference(*exact_leaves[:3], exact_target, **exact_options)
        exact = (exact_loss.detach(), *torch.autograd.grad(exact_loss, exact_leaves, grad_output))
        names = ("loss", "grad_input", "grad_linear_weight", "grad_linear_bias", "grad_target")
        for name, got, expected in zip(names, ours, exact):
            assert got.dtype == dtype, name
            # bfloat16: the logits themselves are rounded (the GEMM's output), 4 roundings' worth.
            tol = (4 if dtype == torch.bfloat16 else 1) * TOL[dtype] * max(float(expected.abs().max()), 1.0)
            torch.testing.assert_close(got.double(), expected, rtol=0, atol=tol, msg=lambda m: f"{name}: {m}")
