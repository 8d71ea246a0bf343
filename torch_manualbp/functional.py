"""The functional API: argument normalisation, then the autograd.Function of each layer."""
import torch

from .layers import LinearCrossEntropyFunction, LinearSigmoidFunction, SoftmaxCrossEntropyFunction, vocab_parallel
from .layers.linear_cross_entropy import ahead_gradients, chunk_budget_or_default
from .layers._common import (
    FLOAT32,
    LOWER_PRECISION,
    apply_layer,
    cast_for_autocast,
    check_float,
    check_int,
    check_reduction,
    check_tensor,
)

_ops = torch.ops.torch_manualbp

__all__ = ["linear_cross_entropy", "linear_sigmoid", "softmax_cross_entropy"]


def linear_sigmoid(input, weight, bias=None):
    """sigmoid(input @ weight.T + bias), fused, with a hand-written backward.

    Args:
        input: ``(*, in_features)``, any number of leading dims (none: a 1-D input).
        weight: ``(out_features, in_features)``.
        bias: ``None``, ``(out_features,)`` or any shape that broadcasts to the output
            (e.g. a per-sample ``(N, out_features)``); its gradient comes back in its own shape.

    Returns:
        ``(*, out_features)``, the dtype of ``input``; under ``torch.autocast`` the autocast dtype, as
        ``F.linear`` (float64 is never cast).
    """
    check_tensor("linear_sigmoid", "input", input)
    check_tensor("linear_sigmoid", "weight", weight)
    check_tensor("linear_sigmoid", "bias", bias, optional=True)
    if torch._C._is_any_autocast_enabled():
        input, weight, bias = cast_for_autocast(LOWER_PRECISION, input.device.type, input, weight, bias)
    return apply_layer(LinearSigmoidFunction, _ops.linear_sigmoid_forward.default, input, weight, bias)


def softmax_cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, *,
                          lse_square_scale=0.0, softcap=None, process_group=None):
    """``F.cross_entropy`` (softmax over dim 1 + cross-entropy), fused, with a hand-written backward.

    Same arguments, values and gradients as ``torch.nn.functional.cross_entropy``, plus two keyword-only
    options of language-model heads (the semantics of ``linear_cross_entropy``).

    Args:
        input: logits ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``; float32/64, bfloat16/float16
            (these accumulate in float32).
        target: class indices (int64 or uint8) of the input's shape without dim 1, or class
            probabilities of the input's shape and dtype (differentiable; rows need not sum to 1).
        weight: ``(C,)`` class weights, the input's dtype, or ``None``.
        ignore_index: a class index whose positions contribute nothing (index targets; with
            probability targets it must stay negative, as torch).
        reduction: ``'none'`` (one loss per position), ``'mean'`` (the cross-entropy divided by the total
            weight of the non-ignored targets, or by the number of positions for probability targets; the
            z-loss by the number of non-ignored positions) or ``'sum'``.
        label_smoothing: eps in [0, 1]: the target becomes ``(1 - eps) target + eps / C``.
        lse_square_scale: lambda >= 0 of the z-loss ``lambda * logsumexp(logits)^2`` added per non-ignored
            position (every position for probability targets).
        softcap: ``None`` or s > 0: the logits become ``s * tanh(logits / s)`` before the softmax (the
            z-loss, too, is that of these logits).
        process_group: ``None``, or a ``torch.distributed`` process group over which the classes are split
            (vocab-parallel): ``input`` ``(C_r,)`` or ``(N, C_r)`` is this rank's contiguous block of the
            classes (blocks in rank order, sizes may differ), ``weight`` and probability targets its block too,
            class-index targets global; the loss is the unsharded one on every rank, the gradient this rank's
            block (torch_manualbp/layers/vocab_parallel.py).

    Under ``torch.autocast`` it runs in float32, as ``F.cross_entropy`` (float64 is never cast).
    """
    fn = "softmax_cross_entropy"
    check_tensor(fn, "input", input)
    check_tensor(fn, "target", target)
    check_tensor(fn, "weight", weight, optional=True)
    check_int(fn, "ignore_index", ignore_index)
    check_reduction(reduction)
    check_float(fn, "label_smoothing", label_smoothing)
    check_float(fn, "lse_square_scale", lse_square_scale)
    check_float(fn, "softcap", softcap, optional=True)
    if torch._C._is_any_autocast_enabled():
        input, target, weight = cast_for_autocast(FLOAT32, input.device.type, input, target, weight)
    if process_group is not None:
        return vocab_parallel.softmax_cross_entropy(
            input, target, weight, ignore_index, reduction, float(label_smoothing), float(lse_square_scale),
            None if softcap is None else float(softcap), process_group,
        )
    loss, *_ = apply_layer(
        SoftmaxCrossEntropyFunction,
        _ops.softmax_cross_entropy_forward.default,
        input, target, weight, reduction, ignore_index, float(label_smoothing), float(lse_square_scale),
        None if softcap is None else float(softcap),
    )
    return loss


def linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None, reduction="mean",
                         ignore_index=-100, label_smoothing=0.0, lse_square_scale=0.0, softcap=None, chunk_budget=None,
                         process_group=None):
    """``F.cross_entropy(F.linear(input, linear_weight, linear_bias), target, ...)`` fused, with a hand-written
    backward: the ``(tokens, num_classes)`` logits are never materialised, a chunk of tokens at a time is.

    A drop-in for ``torch.nn.functional.linear_cross_entropy`` (same argument names; any number of leading
    dims), with two options of language-model heads besides those of ``F.cross_entropy``.

    Args:
        input: ``(*, in_features)``, any number of leading dims (none: one token).
        linear_weight: ``(num_classes, in_features)``, e.g. a language model's tied embedding.
        target: class indices ``(*)`` (int64 or uint8), or class probabilities ``(*, num_classes)`` of the
            input's dtype (differentiable; rows need not sum to 1).
        linear_bias: ``(num_classes,)`` or ``None``.
        weight: ``(num_classes,)`` class weights, the input's dtype, or ``None``.
        reduction: ``'none'`` (one loss per token), ``'mean'`` (the cross-entropy divided by the total weight of
            the non-ignored targets, or by the number of tokens for probability targets; the z-loss by the
            number of non-ignored tokens) or ``'sum'``.
        ignore_index: a class index whose tokens contribute nothing and cost nothing (``None``: -100).
        label_smoothing: eps in [0, 1]: the target becomes ``(1 - eps) target + eps / num_classes``.
        lse_square_scale: lambda >= 0 of the z-loss ``lambda * logsumexp(logits)^2`` added per non-ignored token.
        softcap: ``None`` or s > 0: the logits become ``s * tanh(logits / s)`` before the softmax.
        chunk_budget: bytes of logits held at once (``None``: 64 MiB); the tokens go through in chunks of
            ``chunk_budget // (num_classes * element size)``, at least one.
        process_group: ``None``, or a ``torch.distributed`` process group over which the classes are split
            (vocab-parallel): ``linear_weight`` ``(C_r, in_features)`` is this rank's contiguous block of the
            classes' rows (blocks in rank order, sizes may differ), ``linear_bias``, ``weight`` and probability
            targets its block too, class-index targets global; the loss is the unsharded one on every rank, the
            gradients of ``linear_weight`` and ``linear_bias`` this rank's block, the input's gradient the full
            one (torch_manualbp/layers/vocab_parallel.py).

    Float32/64, bfloat16/float16 (these accumulate in float32: the weight gradient across chunks too). Under
    ``torch.autocast`` the GEMMs run in the autocast dtype, as ``F.linear``, and the loss is float32, as
    ``F.cross_entropy`` (float64 is never cast).
    """
    fn = "linear_cross_entropy"
    check_tensor(fn, "input", input)
    check_tensor(fn, "linear_weight", linear_weight)
    check_tensor(fn, "target", target)
    check_tensor(fn, "linear_bias", linear_bias, optional=True)
    check_tensor(fn, "weight", weight, optional=True)
    ignore_index = -100 if ignore_index is None else ignore_index
    check_int(fn, "ignore_index", ignore_index)
    check_reduction(reduction)
    check_float(fn, "label_smoothing", label_smoothing)
    check_float(fn, "lse_square_scale", lse_square_scale)
    check_float(fn, "softcap", softcap, optional=True)
    chunk_budget = chunk_budget_or_default(fn, chunk_budget)
    cast = False
    if torch._C._is_any_autocast_enabled():
        dtype = input.dtype
        input, linear_weight, linear_bias, target, weight = cast_for_autocast(
            LOWER_PRECISION, input.device.type, input, linear_weight, linear_bias, target, weight
        )
        cast = input.dtype != dtype
    if process_group is not None:
        loss = vocab_parallel.linear_cross_entropy(
            input, linear_weight, target, linear_bias, weight, reduction, ignore_index, float(label_smoothing),
            float(lse_square_scale), None if softcap is None else float(softcap), chunk_budget, process_group,
        )
        return loss.float() if cast else loss
    loss, *_ = apply_layer(
        LinearCrossEntropyFunction,
        _ops.linear_cross_entropy_forward.default,
        input, linear_weight, linear_bias, target, weight, reduction, ignore_index, float(label_smoothing),
        float(lse_square_scale), None if softcap is None else float(softcap),
        ahead_gradients(input, linear_weight, linear_bias, target, reduction), chunk_budget,
    )
    return loss.float() if cast else loss
