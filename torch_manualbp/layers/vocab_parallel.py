"""Vocab-parallel cross-entropy: softmax_cross_entropy and linear_cross_entropy with their classes split over the
ranks of a torch.distributed process group (``process_group=``), the local work done by the LinearCrossEntropy
row kernel in its partial and given-statistics modes (csrc/vocab_parallel.cpp), the ranks combined by a few
collectives on per-token vectors: the logits are never gathered.

Sharding. Rank r of R holds the classes [o_r, o_r + C_r), o_r = C_0 + ... + C_{r-1} (blocks in rank order; sizes
may differ): the logits' columns (softmax_cross_entropy's input (N, C_r)) or linear_weight's rows (C_r, D), and
the same block of linear_bias, of the class weight and of probability targets. The tokens, and class-index
targets (global indices), are the same on every rank.

Derivation. Per token, z' the logits after the bias and the softcap, over all C = sum_r C_r classes, a_c the
coefficients of the loss's linear term (index target t: a_c = (eps / C) w_c + (1 - eps) w_t [c == t];
probability target p: a_c = w_c ((1 - eps) p_c + eps / C)), A = sum_c a_c:
    M   = max_c z'_c = max_r m_r                              m_r = max over rank r's classes
    S   = sum_c exp(z'_c - M) = sum_r S_r exp(m_r - M)        S_r = sum over rank r's classes of exp(z'_c - m_r)
    lse = log sum_c exp(z'_c) = M + log S
    ce  = sum_c a_c (lse - z'_c) = A log S - lin,  lin = sum_c a_c (z'_c - M) = sum_r [lin_r + A_r (m_r - M)]
          with lin_r = sum over rank r's classes of a_c (z'_c - m_r), A_r of a_c;
    index target:        ce = (1 - eps) w_t ((M - z'_t) + log S) + (eps / C) (W log S - lin_w)
                         (W = sum_r W_r the total class weight, lin_w the lin of a_c = w_c, z'_t and w_t from
                         the rank that holds t, 0 from the others: their sum over the ranks is the value)
    probability target:  ce = A log S - lin
    z-loss:              lambda lse^2
Every rank forms the same per-token values from the same reduced vectors, then the same reduction and
normalizers as the unsharded layer ('mean': N_ce = the sum of w_t over non-ignored tokens, or the token count
for probability targets; the z-loss over N_z, the number of non-ignored tokens).
Gradient. d lse / d z'_c = exp(z'_c - M) / S = y_c over all classes, so rank r's block of
    G_c = (k_ce (y_c A - a_c) + k_z 2 lambda lse y_c) (1 - (z'_c / s)^2)       (k_ce, k_z: upstream / normalizers)
needs only the token's M, log S, A and lse: the row kernel's gradient sweep given those. softmax_cross_entropy's
backward communicates nothing. linear_cross_entropy (Z_r = X W_r^T + b_r): dW_r = G_r^T X and db_r = sum_i G_r,i
are rank r's own; dX = sum_r G_r W_r, the full input gradient on every rank, is one all_reduce.

Collectives (torch.distributed, on the group) per forward call:
    all_gather   8 int64 per rank: tokens, C_r, the class-weight size, the smallest and largest non-ignored
                 target, the target kind, whether the input needs a gradient, whether the rank refused its
                 arguments. Gives o_r and C, and lets every rank raise the same exception on bad input
                 (different token counts, a class-weight block of the wrong size, a target outside [0, C))
                 before any numeric collective: no rank is left waiting.
    all_reduce   MAX of m_r, (tokens,)
    all_reduce   SUM of (tokens, 5): S_r exp(m_r - M), lin_r + A_r (m_r - M), A_r (or W_r), z'_t, w_t
and in the backward of linear_cross_entropy one all_reduce SUM of grad_input (tokens, in_features).

linear_cross_entropy computes the gradient in the backward (the logits recomputed chunk by chunk: four GEMMs'
worth in all, against three unsharded): a gradient element needs the global M and S, known only after the
forward's collectives, so the forward could not form it while its chunk of logits was in cache anyway; in
the backward one code path serves every reduction, and a forward under no_grad is one GEMM.

Not supported with a process group: spatial inputs (N, C_r, d1, ...) (move the class dim last and flatten),
double backward and forward-mode AD, torch.func transforms. Under torch.compile the sharded call runs eagerly
(torch.compiler.disable: a graph break before and after it; the rest of the model compiles).
"""
import math

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from ._common import check_loss_options
from .linear_cross_entropy import _accumulation_dtype, _shapes as _linear_shapes

_ops = torch.ops.torch_manualbp
_NO_TARGET_MIN = 2**63 - 1

# The columns of the partial statistics (csrc/cpu/linear_cross_entropy_kernel.h, PartialStatistic).
_MAX, _SUM, _LINEAR, _COEFFICIENT, _TARGET_LOGIT, _TARGET_WEIGHT = range(6)


class Call:
    """One sharded call: the options, the group and this rank's block of the classes."""

    def __init__(self, fn, group, reduction, ignore_index, label_smoothing, lse_square_scale, softcap, chunk_budget=None):
        self.fn = fn
        self.group = group
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.lse_square_scale = lse_square_scale
        self.softcap = softcap
        self.chunk_budget = chunk_budget
        self.class_offset = 0
        self.total_classes = 0
        self.probability = False


# ---- agreement on the arguments: one all_gather, before any numeric collective --------------------------


def _target_range(target, ignore_index, probability):
    """(smallest, largest) non-ignored class index as 0-dim int64 tensors; (_NO_TARGET_MIN, -1) without any."""
    if probability or target.numel() == 0:
        return torch.tensor(_NO_TARGET_MIN), torch.tensor(-1)
    t = target.reshape(-1).long()
    kept = t != ignore_index
    return torch.where(kept, t, _NO_TARGET_MIN).min().cpu(), torch.where(kept, t, -1).max().cpu()


def _agree(call, device, tokens, classes, weight, target, input_grad, local_error):
    """Exchanges each rank's summary (all_gather), raises on every rank alike when any rank's arguments are bad,
    and sets call.class_offset and call.total_classes."""
    fn, group = call.fn, call.group
    weight_size = -1 if weight is None else (weight.shape[0] if weight.dim() == 1 else -2)
    if local_error is None:
        low, high = _target_range(target, call.ignore_index, call.probability)
    else:
        low, high = torch.tensor(_NO_TARGET_MIN), torch.tensor(-1)
    summary = torch.tensor(
        [tokens, classes, weight_size, int(low), int(high), int(call.probability), int(input_grad),
         int(local_error is not None)],
        dtype=torch.int64,
    ).to(device)
    gathered = [torch.empty_like(summary) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, summary, group=group)
    table = torch.stack(gathered).tolist()
    if local_error is not None:
        raise local_error
    refused = [rank for rank, row in enumerate(table) if row[7]]
    if refused:
        raise RuntimeError(
            f"{fn}: rank {refused[0]} of the process group refused its arguments (its own exception says why); "
            "no rank computed the loss"
        )
    counts = [row[0] for row in table]
    if len(set(counts)) > 1:
        raise ValueError(
            f"{fn}: every rank of the process group must hold the same tokens (and its own block of the classes), "
            f"but the ranks hold {counts} tokens"
        )
    if len({row[5] for row in table}) > 1:
        raise ValueError(
            f"{fn}: the ranks of the process group disagree on the target's kind (class indices or this rank's "
            f"block of class probabilities): probability targets on ranks {[r for r, row in enumerate(table) if row[5]]}"
        )
    sizes = [row[1] for row in table]
    mixed = len({row[2] == -1 for row in table}) > 1  # None on some ranks only
    for rank, row in enumerate(table):
        if (row[2] != -1 and row[2] != row[1]) or mixed:
            shown = "None" if row[2] == -1 else ("not 1-D" if row[2] == -2 else f"({row[2]},)")
            raise RuntimeError(
                f"{fn}: expected every rank's weight to be its block of the class weights, of shape (its classes,), "
                f"or None on every rank, but rank {rank} holds {row[1]} classes and a weight of shape {shown}"
            )
    total = sum(sizes)
    low = min(row[3] for row in table)
    high = max(row[4] for row in table)
    if high >= total or (low < 0 and low != _NO_TARGET_MIN):
        bad = high if high >= total else low
        raise IndexError(f"Target {bad} is out of bounds (the process group holds {total} classes).")
    if len({row[6] for row in table}) > 1:
        raise RuntimeError(
            f"{fn}: the ranks of the process group disagree on whether the input requires a gradient (its "
            "backward sums the ranks' input gradients, in which every rank takes part)"
        )
    rank = dist.get_rank(group)
    call.class_offset = sum(sizes[:rank])
    call.total_classes = total


def _meta(tensor):
    return None if tensor is None else tensor.to("meta")


# ---- the combination: two all_reduces of per-token vectors ----------------------------------------------


def _combine(call, partials, target):
    """Per token: (cross-entropy, z-loss or None, given statistics (M, log S, A, lse), kept, w_t) from this rank's
    partials (tokens, 6), all ranks' combined by two all_reduces (see the derivation above)."""
    M = partials[:, _MAX].clone()  # a copy of its own: the all_reduce writes into it
    dist.all_reduce(M, op=dist.ReduceOp.MAX, group=call.group)
    columns = shifted_columns(partials, M)
    dist.all_reduce(columns, op=dist.ReduceOp.SUM, group=call.group)
    return per_token(call, M, columns, target)


def shifted_columns(partials, M):
    """This rank's share of the summed columns, relative to the global max M: (tokens, 5) of
    S_r exp(m_r - M), lin_r + A_r (m_r - M), A_r, z'_t, w_t."""
    shift = partials[:, _MAX] - M  # <= 0; -inf for a block whose logits are all -inf
    coefficient = partials[:, _COEFFICIENT]
    return torch.stack(
        [
            partials[:, _SUM] * torch.exp(shift),
            partials[:, _LINEAR] + torch.where(coefficient != 0, coefficient * shift, 0),
            coefficient,
            partials[:, _TARGET_LOGIT],
            partials[:, _TARGET_WEIGHT],
        ],
        1,
    )


def per_token(call, M, columns, target):
    """(cross-entropy, z-loss or None, given statistics (M, log S, A, lse), kept, w_t) per token from the global
    max M and the columns summed over the ranks (call: the options, the target kind and the class count)."""
    S, linear, coefficient_sum, target_logit, target_weight = columns.unbind(1)
    log_s = S.log()
    lse = M + log_s
    eps, classes = call.label_smoothing, call.total_classes
    if call.probability:
        kept = torch.ones_like(M, dtype=torch.bool)
        A = coefficient_sum
        ce = A * log_s - linear
    else:
        kept = target.reshape(-1) != call.ignore_index
        A = (1 - eps) * target_weight + (eps / classes) * coefficient_sum
        ce = (1 - eps) * target_weight * ((M - target_logit) + log_s)
        if eps > 0:
            ce = ce + (eps / classes) * (coefficient_sum * log_s - linear)
        ce = torch.where(kept, ce, 0)
    z_loss = torch.where(kept, call.lse_square_scale * lse * lse, 0) if call.lse_square_scale else None
    given = torch.stack([M, log_s, A, lse], 1)
    return ce, z_loss, given, kept, target_weight


def reduce_loss(call, ce, z_loss, kept, target_weight, dtype, loss_shape):
    """The loss (as the unsharded layer reduces it) and the normalizers (N_ce, N_z), float64 0-dim."""
    if call.probability:
        ce_normalizer = torch.tensor(float(ce.numel()), dtype=torch.float64, device=ce.device)
    else:
        ce_normalizer = torch.where(kept, target_weight, 0).sum(dtype=torch.float64)
    z_normalizer = kept.sum().to(torch.float64)
    if call.reduction == "none":
        per_token = ce if z_loss is None else ce + z_loss
        return per_token.to(dtype).reshape(loss_shape), ce_normalizer, z_normalizer
    total = ce.sum(dtype=torch.float64)
    mean = call.reduction == "mean"
    if mean:
        total = total / ce_normalizer
    if z_loss is not None:
        z_total = z_loss.sum(dtype=torch.float64)
        total = total + (z_total / z_normalizer if mean else z_total)
    return total.to(dtype), ce_normalizer, z_normalizer


def gradient_scales(call, grad_loss, kept, ce_normalizer, z_normalizer, acc_dtype):
    """k_ce and k_z per token (acc_dtype, (tokens,)): the upstream gradient over the normalizers, 0 where ignored."""
    g = grad_loss.to(torch.float64)
    if call.reduction == "none":
        k = torch.where(kept, g.reshape(-1), 0)
        return k.to(acc_dtype), k.to(acc_dtype)
    if call.reduction == "mean":
        k_ce, k_z = g / ce_normalizer, g / z_normalizer
    else:
        k_ce = k_z = g
    zero = torch.zeros((), dtype=torch.float64, device=kept.device)
    return torch.where(kept, k_ce, zero).to(acc_dtype), torch.where(kept, k_z, zero).to(acc_dtype)


# ---- softmax_cross_entropy ------------------------------------------------------------------------------


class VocabParallelCrossEntropyFunction(torch.autograd.Function):
    """softmax_cross_entropy of this rank's block of the logits (tokens, C_r); see the module's docstring."""

    @staticmethod
    def forward(ctx, input, target, weight, call, loss_shape):
        partials = _ops.vocab_parallel_cross_entropy_statistics.default(
            input, target, weight, call.ignore_index, call.label_smoothing, call.softcap, call.class_offset,
            call.total_classes,
        )
        ce, z_loss, given, kept, target_weight = _combine(call, partials, target)
        loss, ce_normalizer, z_normalizer = reduce_loss(call, ce, z_loss, kept, target_weight, input.dtype, loss_shape)
        ctx.call = call
        ctx.save_for_backward(input, target, weight, given, kept, ce_normalizer, z_normalizer)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        input, target, weight, given, kept, ce_normalizer, z_normalizer = ctx.saved_tensors
        call = ctx.call
        if ctx.needs_input_grad[2]:
            raise RuntimeError(f"{call.fn}: the derivative for 'weight' is not implemented")
        need_target = ctx.needs_input_grad[1] and call.probability
        k_ce, k_z = gradient_scales(call, grad_loss, kept, ce_normalizer, z_normalizer, given.dtype)
        grad_input, grad_target = _ops.vocab_parallel_cross_entropy_gradient.default(
            input, target, weight, given, k_ce, k_z, call.ignore_index, call.label_smoothing, call.lse_square_scale,
            call.softcap, call.class_offset, call.total_classes, [ctx.needs_input_grad[0], need_target],
        )
        return (grad_input if ctx.needs_input_grad[0] else None, grad_target if need_target else None, None, None, None)


@torch.compiler.disable
def softmax_cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, lse_square_scale, softcap,
                          process_group):
    """softmax_cross_entropy with the classes split over process_group (input: this rank's (C_r,) or (N, C_r))."""
    fn = "softmax_cross_entropy"
    call = Call(fn, process_group, reduction, ignore_index, label_smoothing, lse_square_scale, softcap)
    local_error = None
    rows, flat_target, tokens, classes, loss_shape = input, target, 0, 0, ()
    try:
        if input.dim() not in (1, 2):
            raise ValueError(
                f"{fn}: with a process_group, expected input of shape (C,) or (N, C) (this rank's block of the "
                f"classes), but got input of shape {list(input.shape)}; for spatial inputs (N, C, d1, ..., dK) move "
                "the class dim last and flatten: input.movedim(1, -1).reshape(-1, C), with the target flattened alike"
            )
        call.probability = target.shape == input.shape
        rows = input.reshape(1, -1) if input.dim() == 1 else input
        if call.probability:
            flat_target = target.reshape(rows.shape)
        else:
            flat_target = target.reshape(-1) if target.dim() == input.dim() - 1 else target
        tokens, classes = rows.shape
        loss_shape = tuple(input.shape[:-1]) if input.dim() == 2 else ()
        weight_ok = weight is None or (weight.dim() == 1 and weight.shape[0] == classes)
        acc = _accumulation_dtype(rows.dtype) if rows.is_floating_point() else torch.float64
        given = torch.empty((tokens, 4), dtype=acc, device="meta")
        scale = torch.empty((tokens,), dtype=acc, device="meta")
        # The C++ checks of the ops (their fake kernels, same messages), on shapes alone.
        _ops.vocab_parallel_cross_entropy_gradient.default(
            _meta(rows), _meta(flat_target), _meta(weight) if weight_ok else None, given, scale, scale, ignore_index,
            label_smoothing, lse_square_scale, softcap, 0, max(classes, 1), [True, True],
        )
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        local_error = error
    _agree(call, input.device, tokens, classes, weight, flat_target, False, local_error)
    return VocabParallelCrossEntropyFunction.apply(rows, flat_target, weight, call, loss_shape)


# ---- linear_cross_entropy -------------------------------------------------------------------------------


class VocabParallelLinearCrossEntropyFunction(torch.autograd.Function):
    """linear_cross_entropy with this rank's rows of the projection (C_r, in_features); see the module's docstring."""

    @staticmethod
    def forward(ctx, input, linear_weight, linear_bias, target, weight, call, loss_shape):
        partials = _ops.vocab_parallel_linear_cross_entropy_statistics.default(
            input, linear_weight, linear_bias, target, weight, call.ignore_index, call.label_smoothing, call.softcap,
            call.class_offset, call.total_classes, call.chunk_budget,
        )
        ce, z_loss, given, kept, target_weight = _combine(call, partials, target)
        loss, ce_normalizer, z_normalizer = reduce_loss(call, ce, z_loss, kept, target_weight, input.dtype, loss_shape)
        ctx.call = call
        ctx.save_for_backward(input, linear_weight, linear_bias, target, weight, given, kept, ce_normalizer,
                              z_normalizer)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        input, linear_weight, linear_bias, target, weight, given, kept, ce_normalizer, z_normalizer = ctx.saved_tensors
        call = ctx.call
        if ctx.needs_input_grad[4]:
            raise RuntimeError(f"{call.fn}: the derivative for 'weight' is not implemented")
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                ctx.needs_input_grad[2] and linear_bias is not None, ctx.needs_input_grad[3] and call.probability]
        k_ce, k_z = gradient_scales(call, grad_loss, kept, ce_normalizer, z_normalizer, given.dtype)
        grad_input, grad_weight, grad_bias, grad_target = _ops.vocab_parallel_linear_cross_entropy_gradient.default(
            input, linear_weight, linear_bias, target, weight, given, k_ce, k_z, call.ignore_index,
            call.label_smoothing, call.lse_square_scale, call.softcap, call.class_offset, call.total_classes, mask,
            call.chunk_budget,
        )
        if mask[0]:
            # dX = sum over the ranks of G_r W_r: the one collective of the backward.
            dist.all_reduce(grad_input, op=dist.ReduceOp.SUM, group=call.group)
        return (*(g if wanted else None for g, wanted in zip((grad_input, grad_weight, grad_bias, grad_target), mask)),
                None, None, None)


@torch.compiler.disable
def linear_cross_entropy(input, linear_weight, target, linear_bias, weight, reduction, ignore_index, label_smoothing,
                         lse_square_scale, softcap, chunk_budget, process_group):
    """linear_cross_entropy with linear_weight this rank's rows (C_r, in_features) of the projection."""
    fn = "linear_cross_entropy"
    call = Call(fn, process_group, reduction, ignore_index, label_smoothing, lse_square_scale, softcap, chunk_budget)
    local_error = None
    tokens, classes, loss_shape = 0, 0, ()
    try:
        classes = linear_weight.shape[0] if linear_weight.dim() == 2 else 0
        call.probability = input.dim() >= 1 and target.shape == (*input.shape[:-1], classes)
        tokens = math.prod(input.shape[:-1]) if input.dim() >= 1 else 0
        loss_shape = tuple(input.shape[:-1])
        weight_ok = weight is None or (weight.dim() == 1 and weight.shape[0] == classes)
        acc = _accumulation_dtype(input.dtype) if input.is_floating_point() else torch.float64
        given = torch.empty((tokens, 4), dtype=acc, device="meta")
        scale = torch.empty((tokens,), dtype=acc, device="meta")
        _ops.vocab_parallel_linear_cross_entropy_gradient.default(
            _meta(input), _meta(linear_weight), _meta(linear_bias), _meta(target), _meta(weight) if weight_ok else None,
            given, scale, scale, ignore_index, label_smoothing, lse_square_scale, softcap, 0, max(classes, 1),
            [True, True, True, True], chunk_budget,
        )
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        local_error = error
    _agree(call, input.device, tokens, classes, weight, target, input.requires_grad, local_error)
    return VocabParallelLinearCrossEntropyFunction.apply(
        input, linear_weight, linear_bias, target, weight, call, loss_shape
    )


# ---- fake kernels: shapes and dtypes, the C++ checks with their messages ---------------------------------


def _check_block(op, class_offset, classes, total_classes):
    torch._check(
        class_offset >= 0 and total_classes >= class_offset + classes and total_classes > 0,
        lambda: f"{op}: expected this rank's classes [class_offset, class_offset + {classes}) to lie in "
        f"[0, total_classes), but got class_offset={class_offset} and total_classes={total_classes}",
    )


def _check_logits(op, input, target, weight):
    """The checks of csrc/vocab_parallel.cpp's check_logits; returns whether target holds probabilities."""
    torch._check_type(
        input.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16),
        lambda: f"{op}: expected input to be a floating-point tensor (float32, float64, bfloat16 or float16), but got input of dtype {input.dtype}",
    )
    torch._check(
        input.dim() == 2,
        lambda: f"{op}: expected input of shape (tokens, classes of this rank) with 2 dimensions, but got input of shape {list(input.shape)}",
    )
    probability = target.shape == input.shape
    if probability:
        torch._check(
            target.dtype == input.dtype,
            lambda: f"{op}: expected target (class probabilities) to have the same dtype as input ({input.dtype}), but got target (class probabilities) of dtype {target.dtype}",
        )
    else:
        torch._check(
            target.dtype in (torch.int64, torch.uint8),
            lambda: f"{op}: expected target of dtype int64 or uint8 (class indices) or of the input's shape and dtype (class probabilities), but got target of dtype {target.dtype} and shape {list(target.shape)}",
        )
        torch._check(
            list(target.shape) == [input.shape[0]],
            lambda: f"{op}: expected target of shape [{input.shape[0]}], but got target of shape {list(target.shape)}",
        )
    if weight is not None:
        torch._check(
            weight.dtype == input.dtype,
            lambda: f"{op}: expected weight to have the same dtype as input ({input.dtype}), but got weight of dtype {weight.dtype}",
        )
        torch._check(
            weight.dim() == 1 and weight.shape[0] == input.shape[1],
            lambda: f"{op}: expected weight of shape (classes of this rank,) = ({input.shape[1]},), but got weight of shape {list(weight.shape)}",
        )
    return probability


def _check_statistics(op, statistics, ce_scale, z_scale, tokens, input):
    acc = _accumulation_dtype(input.dtype)
    for name, tensor, shape in (("statistics", statistics, [tokens, 4]), ("ce_scale", ce_scale, [tokens]),
                                ("z_scale", z_scale, [tokens])):
        torch._check(
            tensor.dtype == acc,
            lambda: f"{op}: expected {name} of dtype {acc} (the input's accumulation dtype), but got {name} of dtype {tensor.dtype}",
        )
        torch._check(
            list(tensor.shape) == shape,
            lambda: f"{op}: expected {name} of shape {shape}, but got {name} of shape {list(tensor.shape)}",
        )


@torch.library.register_fake("torch_manualbp::vocab_parallel_cross_entropy_statistics")
def _statistics_fake(input, target, weight, ignore_index, label_smoothing, softcap, class_offset, total_classes):
    op = "vocab_parallel_cross_entropy_statistics"
    check_loss_options(op, label_smoothing, 0.0, softcap)
    _check_logits(op, input, target, weight)
    _check_block(op, class_offset, input.shape[1], total_classes)
    return input.new_empty((input.shape[0], 6), dtype=_accumulation_dtype(input.dtype))


@torch.library.register_fake("torch_manualbp::vocab_parallel_cross_entropy_gradient")
def _gradient_fake(input, target, weight, statistics, ce_scale, z_scale, ignore_index, label_smoothing,
                   lse_square_scale, softcap, class_offset, total_classes, output_mask):
    op = "vocab_parallel_cross_entropy_gradient"
    check_loss_options(op, label_smoothing, lse_square_scale, softcap)
    probability = _check_logits(op, input, target, weight)
    _check_block(op, class_offset, input.shape[1], total_classes)
    _check_statistics(op, statistics, ce_scale, z_scale, input.shape[0], input)
    want_target = output_mask[1] and probability
    if not output_mask[0] and not want_target:
        return input.new_empty((0,)), input.new_empty((0,))
    return (input.new_empty(input.shape) if output_mask[0] else input.new_empty((0,)),
            input.new_empty(input.shape) if want_target else input.new_empty((0,)))


@torch.library.register_fake("torch_manualbp::vocab_parallel_linear_cross_entropy_statistics")
def _linear_statistics_fake(input, linear_weight, linear_bias, target, weight, ignore_index, label_smoothing, softcap,
                            class_offset, total_classes, chunk_budget):
    op = "vocab_parallel_linear_cross_entropy_statistics"
    tokens, _ = _linear_shapes(op, input, linear_weight, linear_bias, target, weight, "none", ignore_index,
                               label_smoothing, 0.0, softcap, chunk_budget)
    _check_block(op, class_offset, linear_weight.shape[0], total_classes)
    count = 1
    for size in tokens:
        count *= size
    return input.new_empty((count, 6), dtype=_accumulation_dtype(input.dtype))


@torch.library.register_fake("torch_manualbp::vocab_parallel_linear_cross_entropy_gradient")
def _linear_gradient_fake(input, linear_weight, linear_bias, target, weight, statistics, ce_scale, z_scale,
                          ignore_index, label_smoothing, lse_square_scale, softcap, class_offset, total_classes,
                          output_mask, chunk_budget):
    op = "vocab_parallel_linear_cross_entropy_gradient"
    tokens, _ = _linear_shapes(op, input, linear_weight, linear_bias, target, weight, "none", ignore_index,
                               label_smoothing, lse_square_scale, softcap, chunk_budget)
    _check_block(op, class_offset, linear_weight.shape[0], total_classes)
    count = 1
    for size in tokens:
        count *= size
    _check_statistics(op, statistics, ce_scale, z_scale, count, input)
    probability = target.dim() == input.dim() and list(target.shape) == tokens + [linear_weight.shape[0]]
    nothing = input.new_empty((0,))
    return (
        input.new_empty(input.shape) if output_mask[0] else nothing,
        input.new_empty(linear_weight.shape) if output_mask[1] else input.new_empty((0,)),
        input.new_empty((linear_weight.shape[0],)) if output_mask[2] and linear_bias is not None
        else input.new_empty((0,)),
        input.new_empty(target.shape) if output_mask[3] and probability else input.new_empty((0,)),
    )
