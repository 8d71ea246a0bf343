"""SoftmaxCrossEntropy, everything Python about it: F.cross_entropy(x, target, weight, ignore_index,
reduction, label_smoothing) fused, the class dim 1 of x (C,), (N, C) or (N, C, d1, ..., dK).

Per position i, with m_i = max_c x_ic, s_i = sum_c exp(x_ic - m_i), lse_i = m_i + log s_i, a_i the
weighted, smoothed target distribution, A_i its sum and w the class weights:
    forward        loss_i = sum_c a_ic (lse_i - x_ic), reduced ('mean': divided by the normalizer)
                                                                          (csrc/softmax_cross_entropy.cpp)
    backward       grad_input = g_i (softmax(x_i) A_i - a_i)    grad_target = g_i (1 - eps) w (lse_i - x_i)
    forward AD     SoftmaxCrossEntropyFunction.jvp
    double backward and the backward's tangents: SoftmaxCrossEntropyBackwardFunction below

The ops torch_manualbp::softmax_cross_entropy_forward / softmax_cross_entropy_backward (csrc/ops.cpp) get
here: the Functions' backward as their autograd (register_autograd), fake kernels that check shapes as
the C++ does (same messages), batching rules for torch.vmap, and autocast kernels (F.cross_entropy's
rule: float32).
"""
import torch

from .._compat import register_vmap
from ._common import (
    FLOAT32,
    NonTensorArgs,
    batch_first,
    call_kernel,
    forward_ad_possible,
    functorch_active,
    per_sample,
    register_autocast,
    register_backward_op_autograd,
)

_ops = torch.ops.torch_manualbp


class SoftmaxCrossEntropyFunction(torch.autograd.Function):
    """F.cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing), fused.

    ``apply(input, target, weight, reduction, ignore_index, label_smoothing)`` (the order of the op
    softmax_cross_entropy_forward) returns ``(loss, max_logit, log_sum, normalizer)``; only ``loss`` is
    differentiable (with respect to ``input``, and to ``target`` when it holds class probabilities).

    Backward (csrc/softmax_cross_entropy.cpp), per position i, from the saved m_i = max_logit and
    log s_i = log_sum (lse_i = m_i + log s_i, softmax(x_i) = exp(x_i - m_i) / s_i):
        grad_input  = g_i (softmax(x_i) A_i - a_i)      grad_target = g_i (1 - eps) w (lse_i - x_i)
    with a_i the weighted, smoothed target distribution, A_i its sum and g_i = grad_loss / normalizer.
    Forward-mode (jvp), with tangents x' and (probability targets) p', y = softmax(x), <.,.> over classes:
        loss_i' = (<y A_i - a_i, x_i'> + (1 - eps) <w p_i', lse_i - x_i>) / normalizer, reduced as the loss
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, target, weight, reduction, ignore_index, label_smoothing):
        return call_kernel(
            _ops.softmax_cross_entropy_forward.default, input, target, weight, reduction, ignore_index, label_smoothing
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, reduction, ignore_index, label_smoothing = inputs
        _, max_logit, log_sum, normalizer = output
        ctx.mark_non_differentiable(max_logit, log_sum, normalizer)
        ctx.set_materialize_grads(False)  # no zero gradient buffers for the non-differentiable outputs
        # References to the inputs and two values per position: nothing of the logits' size is created.
        ctx.save_for_backward(input, target, weight, max_logit, log_sum, normalizer)
        if forward_ad_possible():  # jvp runs during this call or never: save for it only when it may
            ctx.save_for_forward(input, target, weight, max_logit, log_sum, normalizer)
        ctx.reduction = reduction
        ctx.ignore_index = ignore_index
        ctx.label_smoothing = label_smoothing

    @staticmethod
    def backward(ctx, grad_loss, grad_max_logit, grad_log_sum, grad_normalizer):
        if grad_loss is None:
            return None, None, None, None, None, None
        input, target, weight, max_logit, log_sum, normalizer = ctx.saved_tensors
        need_input, need_target, need_weight = ctx.needs_input_grad[:3]
        if need_weight:  # as torch's nll_loss: class weights are constants
            raise RuntimeError("softmax_cross_entropy: the derivative for 'weight' is not implemented")
        if not (need_input or need_target):
            return None, None, None, None, None, None
        options = (ctx.reduction, ctx.ignore_index, ctx.label_smoothing, [need_input, need_target])
        if torch.is_grad_enabled() or functorch_active():
            # create_graph / torch.func: the backward op's own Function, which has derivatives and tangents.
            grad_input, grad_target = SoftmaxCrossEntropyBackwardFunction.apply(
                grad_loss, input, target, weight, max_logit, log_sum, normalizer, NonTensorArgs(options)
            )
        else:
            grad_input, grad_target = call_kernel(
                _ops.softmax_cross_entropy_backward.default,
                grad_loss, input, target, weight, max_logit, log_sum, normalizer, *options,
            )
        return (
            grad_input if need_input else None,
            grad_target if need_target else None,
            None, None, None, None,
        )

    @staticmethod
    def jvp(ctx, input_tangent, target_tangent, *_):
        # No tangent from the class weights: constants, as in backward. (torch.func hands every input a
        # tangent, zeros where it has none, so a weight tangent cannot be refused here as in backward.)
        input, target, weight, max_logit, log_sum, normalizer = ctx.saved_tensors
        class_dim = 0 if input.dim() == 1 else 1
        eps = ctx.label_smoothing
        a, A, class_weight = _softmax_cross_entropy_coefficients(input, target, weight, ctx.ignore_index, eps)
        # (m - x) + log s: in this order, exact where the softmax is not negligible.
        lse_minus_x = (max_logit.unsqueeze(class_dim) - input) + log_sum.unsqueeze(class_dim)
        lse_minus_x = lse_minus_x.to(input.dtype)
        per_class = torch.zeros_like(input)
        if input_tangent is not None:
            per_class = per_class + ((-lse_minus_x).exp() * A - a) * input_tangent
        if target_tangent is not None and _is_probability_target(input, target):
            per_class = per_class + (1 - eps) * class_weight * target_tangent * lse_minus_x
        per_position = per_class.sum(class_dim) / normalizer.to(input.dtype)
        loss_tangent = per_position if ctx.reduction == "none" else per_position.sum()
        return loss_tangent, None, None, None  # max_logit, log_sum, normalizer: non-differentiable


def _is_probability_target(input, target):
    """Class probabilities: a target of the input's shape (the C++ checks made sure it is floating)."""
    return target.shape == input.shape


def _softmax_cross_entropy_coefficients(input, target, weight, ignore_index, label_smoothing):
    """(a, A, w): a of the input's shape with loss_i = sum_c a_c (lse - x_c), A = a summed over the class
    dim (kept), and the class weights w broadcastable along the class dim (ones without weight).

    Index targets: a_c = w_c ((1 - eps) [c == t] + eps / C), zero at ignored positions.
    Probability targets: a_c = w_c q_c, q = (1 - eps) p + eps / C (differentiable in p).
    """
    class_dim = 0 if input.dim() == 1 else 1
    classes = input.shape[class_dim]
    eps = label_smoothing
    weight_shape = [1] * input.dim()
    weight_shape[class_dim] = classes
    w = (torch.ones(classes, dtype=input.dtype, device=input.device) if weight is None else weight).view(weight_shape)
    if _is_probability_target(input, target):
        a = w * ((1 - eps) * target + eps / classes)
    else:
        index = target.long().unsqueeze(class_dim)
        kept = index != ignore_index
        index = torch.where(kept, index, 0)
        one_hot = torch.zeros_like(input).scatter(class_dim, index, 1.0)
        a = w * ((1 - eps) * one_hot + eps / classes) * kept
    return a, a.sum(class_dim, keepdim=True), w


class SoftmaxCrossEntropyBackwardFunction(torch.autograd.Function):
    """(grad_input, grad_target) = softmax_cross_entropy_backward(grad_loss, x, p, ...), differentiable in
    grad_loss, x and (probability targets) p. max_logit and log_sum are taken as the functions of x they
    are (their sum lse has d lse / d x = y).

    With y = softmax(x) (lse is a function of x: d lse / d x = y), g = grad_loss / normalizer per
    position, GI = grad_grad_input, GT = grad_grad_target, <.,.> sums over the class dim:
        grad_input  = g (y A - a)                  grad_target = g (1 - eps) w (lse - x)
        d/d grad_loss = (<GI, y A - a> + <GT, (1 - eps) w (lse - x)>) / normalizer   (summed to its shape)
        d/d x         = g A y (GI - <GI, y>)  +  g (1 - eps) (y <GT, w> - GT w)
        d/d p         = g (1 - eps) w (<GI, y> - GI)           (probability targets: A, a depend on p)
    Forward-mode, with tangents g' = grad_loss' / normalizer, x', p' (a' = (1 - eps) w p', A' its sum):
        y'            = y (x' - <y, x'>)
        grad_input'   = g' (y A - a) + g (y' A + y A' - a')
        grad_target'  = g' (1 - eps) w (lse - x) + g (1 - eps) w (<y, x'> - x')
    Built from differentiable torch ops, so higher derivatives exist as well.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(grad_loss, input, target, weight, max_logit, log_sum, normalizer, non_tensor_args):
        return _ops.softmax_cross_entropy_backward.default(
            grad_loss, input, target, weight, max_logit, log_sum, normalizer, *non_tensor_args.values
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_loss, input, target, weight, max_logit, log_sum, normalizer, non_tensor_args = inputs
        ctx.save_for_backward(grad_loss, input, target, weight, normalizer)
        ctx.save_for_forward(grad_loss, input, target, weight, normalizer)
        ctx.reduction, ctx.ignore_index, ctx.label_smoothing, ctx.output_mask = non_tensor_args.values
        ctx.set_materialize_grads(False)

    @staticmethod
    def _per_position_grad(ctx, grad_loss, normalizer, class_dim):
        """grad_loss / normalizer, broadcastable against the input."""
        g = grad_loss / normalizer
        return g.unsqueeze(class_dim) if ctx.reduction == "none" else g

    @staticmethod
    def _recompute(ctx):
        """What backward and jvp both start from, rebuilt from the saved tensors: (input, normalizer,
        class_dim, eps, probability, a, A, class weights, log y, y, g)."""
        grad_loss, input, target, weight, normalizer = ctx.saved_tensors
        class_dim = 0 if input.dim() == 1 else 1
        eps = ctx.label_smoothing
        a, A, class_weight = _softmax_cross_entropy_coefficients(input, target, weight, ctx.ignore_index, eps)
        log_y = torch.log_softmax(input, class_dim)
        g = SoftmaxCrossEntropyBackwardFunction._per_position_grad(ctx, grad_loss, normalizer, class_dim)
        probability = _is_probability_target(input, target)
        return input, normalizer, class_dim, eps, probability, a, A, class_weight, log_y, log_y.exp(), g

    @staticmethod
    def backward(ctx, grad_grad_input, grad_grad_target):
        input, normalizer, class_dim, eps, probability, a, A, class_weight, log_y, y, g = (
            SoftmaxCrossEntropyBackwardFunction._recompute(ctx)
        )
        per_position = torch.zeros_like(input)
        grad_x = torch.zeros_like(input)
        grad_p = None
        if ctx.output_mask[0] and grad_grad_input is not None:
            gi_dot_y = (grad_grad_input * y).sum(class_dim, keepdim=True)
            per_position = per_position + grad_grad_input * (y * A - a)
            grad_x = grad_x + g * A * y * (grad_grad_input - gi_dot_y)
            if probability:
                grad_p = g * (1 - eps) * class_weight * (gi_dot_y - grad_grad_input)
        if probability and ctx.output_mask[1] and grad_grad_target is not None:
            gt_w = grad_grad_target * class_weight
            per_position = per_position + gt_w * (1 - eps) * (-log_y)
            grad_x = grad_x + g * (1 - eps) * (y * gt_w.sum(class_dim, keepdim=True) - gt_w)
        per_position = per_position.sum(class_dim) / normalizer
        grad_grad_loss = per_position if ctx.reduction == "none" else per_position.sum()
        return grad_grad_loss, grad_x, grad_p, None, None, None, None, None

    @staticmethod
    def jvp(ctx, grad_loss_tangent, input_tangent, target_tangent, *_):
        input, normalizer, class_dim, eps, probability, a, A, class_weight, log_y, y, g = (
            SoftmaxCrossEntropyBackwardFunction._recompute(ctx)
        )
        input_part = torch.zeros_like(input)  # the tangent of (y A - a)
        target_part = torch.zeros_like(input)  # the tangent of (lse - x)
        if input_tangent is not None:
            y_dot_tangent = (y * input_tangent).sum(class_dim, keepdim=True)
            input_part = input_part + y * (input_tangent - y_dot_tangent) * A
            target_part = target_part + y_dot_tangent - input_tangent
        if probability and target_tangent is not None:
            a_tangent = (1 - eps) * class_weight * target_tangent
            input_part = input_part + y * a_tangent.sum(class_dim, keepdim=True) - a_tangent
        g_tangent = None
        if grad_loss_tangent is not None:
            g_tangent = SoftmaxCrossEntropyBackwardFunction._per_position_grad(
                ctx, grad_loss_tangent, normalizer, class_dim
            )
        grad_input_tangent = grad_target_tangent = None
        if ctx.output_mask[0]:
            grad_input_tangent = g * input_part
            if g_tangent is not None:
                grad_input_tangent = grad_input_tangent + g_tangent * (y * A - a)
        if probability and ctx.output_mask[1]:
            grad_target_tangent = g * (1 - eps) * class_weight * target_part
            if g_tangent is not None:
                grad_target_tangent = grad_target_tangent + g_tangent * (1 - eps) * class_weight * (-log_y)
        nothing = input.new_empty((0,))
        return (
            nothing if grad_input_tangent is None else grad_input_tangent,
            nothing if grad_target_tangent is None else grad_target_tangent,
        )


# ---- autograd of the ops: the Functions' backward ----------------------------------------------------

torch.library.register_autograd(
    "torch_manualbp::softmax_cross_entropy_forward",
    SoftmaxCrossEntropyFunction.backward,
    setup_context=SoftmaxCrossEntropyFunction.setup_context,
)
register_backward_op_autograd(
    "torch_manualbp::softmax_cross_entropy_backward", SoftmaxCrossEntropyBackwardFunction, 7
)


# ---- fake kernels (torch.compile, export): shapes and dtypes, checked as csrc/*_args.cpp ---------------


def _softmax_cross_entropy_shapes(op, input, target, weight, reduction, ignore_index, label_smoothing):
    """The checks of csrc/softmax_cross_entropy_args.cpp (same messages); returns (position shape,
    loss shape, dtype of max_logit / log_sum / normalizer)."""
    torch._check_value(
        reduction in ("none", "mean", "sum"),
        lambda: f"{reduction} is not a valid value for reduction (expected 'none', 'mean' or 'sum')",
    )
    torch._check_type(
        input.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16),
        lambda: f"{op}: expected input to be a floating-point tensor (float32, float64, bfloat16 or float16), but got input of dtype {input.dtype}",
    )
    torch._check(
        input.dim() >= 1,
        lambda: f"{op}: expected input of shape (C,), (N, C) or (N, C, d1, ..., dK), but got input of shape {list(input.shape)}",
    )
    class_dim = 0 if input.dim() == 1 else 1
    positions = [s for d, s in enumerate(input.shape) if d != class_dim]
    if target.shape == input.shape:
        torch._check(
            target.is_floating_point(),
            lambda: f"{op}: expected target (class probabilities: the input's shape) of a floating dtype, but got target of dtype {target.dtype} and shape {list(target.shape)}",
        )
        torch._check(
            target.dtype == input.dtype,
            lambda: f"{op}: expected target (class probabilities) to have the same dtype as input ({input.dtype}), but got target (class probabilities) of dtype {target.dtype}",
        )
        torch._check(
            ignore_index < 0,
            lambda: f"{op}: ignore_index is not supported for class-probability targets (floating target of the input's shape); expected a negative ignore_index (e.g. the default -100), but got ignore_index={ignore_index}",
        )
    else:
        torch._check(
            target.dtype in (torch.int64, torch.uint8),
            lambda: f"{op}: expected target of dtype int64 or uint8 (class indices, the input's shape without the class dim 1) or of the input's floating dtype and shape (class probabilities), but got target of dtype {target.dtype} and shape {list(target.shape)} for input of shape {list(input.shape)}",
        )
        if input.dim() >= 2 and target.dim() == input.dim() - 1:
            torch._check_value(
                target.shape[0] == input.shape[0],
                lambda: f"{op}: expected input batch_size ({input.shape[0]}) to match target batch_size ({target.shape[0]}): target of shape {list(target.shape)} for input of shape {list(input.shape)}",
            )
        torch._check(
            list(target.shape) == positions,
            lambda: f"{op}: expected target of shape {positions} (class indices: the input's shape without the class dim 1) or {list(input.shape)} (class probabilities), but got target of shape {list(target.shape)} for input of shape {list(input.shape)}",
        )
    torch._check(
        0.0 <= label_smoothing <= 1.0,
        lambda: f"{op}: label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}",
    )
    if weight is not None:
        torch._check(
            weight.dtype == input.dtype,
            lambda: f"{op}: expected weight to have the same dtype as input ({input.dtype}), but got weight of dtype {weight.dtype}",
        )
        classes = input.shape[class_dim]
        torch._check(
            weight.dim() == 1 and weight.shape[0] == classes,
            lambda: f"{op}: expected weight of shape (C,) = ({classes},), one weight per class, but got weight of shape {list(weight.shape)}",
        )
    stats_dtype = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
    return positions, (positions if reduction == "none" else []), stats_dtype


@torch.library.register_fake("torch_manualbp::softmax_cross_entropy_forward")
def _softmax_cross_entropy_forward_fake(input, target, weight, reduction, ignore_index, label_smoothing):
    positions, loss_shape, stats_dtype = _softmax_cross_entropy_shapes(
        "softmax_cross_entropy", input, target, weight, reduction, ignore_index, label_smoothing
    )
    return (
        input.new_empty(loss_shape),
        input.new_empty(positions, dtype=stats_dtype),  # max_logit
        input.new_empty(positions, dtype=stats_dtype),  # log_sum
        input.new_empty((), dtype=stats_dtype),
    )


@torch.library.register_fake("torch_manualbp::softmax_cross_entropy_backward")
def _softmax_cross_entropy_backward_fake(
    grad_loss, input, target, weight, max_logit, log_sum, normalizer, reduction, ignore_index, label_smoothing,
    output_mask,
):
    op = "softmax_cross_entropy_backward"
    positions, loss_shape, stats_dtype = _softmax_cross_entropy_shapes(
        op, input, target, weight, reduction, ignore_index, label_smoothing
    )
    torch._check(
        list(grad_loss.shape) == loss_shape,
        lambda: f"{op}: expected grad_loss of shape {loss_shape}, but got grad_loss of shape {list(grad_loss.shape)}",
    )
    for name, stats in (("max_logit", max_logit), ("log_sum", log_sum)):
        torch._check(
            stats.dtype == stats_dtype,
            lambda: f"{op}: expected {name} of dtype {stats_dtype} (from the forward of a {input.dtype} input), "
            f"but got {name} of dtype {stats.dtype}",
        )
        torch._check(
            list(stats.shape) == positions,
            lambda: f"{op}: expected {name} of shape {positions}, but got {name} of shape {list(stats.shape)}",
        )
    probability = target.shape == input.shape
    return (
        input.new_empty(input.shape) if output_mask[0] else input.new_empty((0,)),
        input.new_empty(input.shape) if output_mask[1] and probability else input.new_empty((0,)),
    )


# ---- batching rules (torch.vmap): reduction='none' folds the vmapped dim into the positions; 'mean' ----
# and 'sum' (each sample has its own normalizer) and batched class weights or normalizers run one op call
# per sample.


def _position_folding(batch_size, input, input_bdim):
    """(fold, unfold) of the vmapped dim into the positions: fold(tensor, bdim) makes (B, N, ...) of
    (B*N, ...) when each sample's input is (N, C, ...) (a sample's (C,) input makes the B samples an
    (N = B, C) batch as they are), unfold(tensor) undoes it on a result."""
    input_has_batch_dim = input.dim() - (input_bdim is not None) >= 2

    def fold(tensor, bdim):
        tensor = batch_first(tensor, bdim, batch_size)
        return tensor.flatten(0, 1) if input_has_batch_dim else tensor

    def unfold(tensor):
        return tensor.unflatten(0, (batch_size, -1)) if input_has_batch_dim else tensor

    return fold, unfold


@register_vmap("torch_manualbp::softmax_cross_entropy_forward")
def _softmax_cross_entropy_forward_vmap(info, in_dims, input, target, weight, reduction, ignore_index, label_smoothing):
    """reduction='none' folds the samples into the positions (the normalizer is 1 for all); 'mean' and
    'sum' reduce over each sample, with each sample's normalizer, and run per sample."""
    input_bdim, target_bdim, weight_bdim = in_dims[:3]
    args = (input, target, weight, reduction, ignore_index, label_smoothing)
    if reduction != "none" or weight_bdim is not None:
        return per_sample(_ops.softmax_cross_entropy_forward.default, info, in_dims, args)
    fold, unfold = _position_folding(info.batch_size, input, input_bdim)
    loss, max_logit, log_sum, normalizer = _ops.softmax_cross_entropy_forward.default(
        fold(input, input_bdim), fold(target, target_bdim), weight, reduction, ignore_index, label_smoothing
    )
    return (unfold(loss), unfold(max_logit), unfold(log_sum), normalizer), (0, 0, 0, None)


@register_vmap("torch_manualbp::softmax_cross_entropy_backward")
def _softmax_cross_entropy_backward_vmap(
    info, in_dims, grad_loss, input, target, weight, max_logit, log_sum, normalizer, reduction, ignore_index,
    label_smoothing, output_mask,
):
    grad_loss_bdim, input_bdim, target_bdim, weight_bdim, max_logit_bdim, log_sum_bdim, normalizer_bdim = in_dims[:7]
    args = (
        grad_loss, input, target, weight, max_logit, log_sum, normalizer, reduction, ignore_index, label_smoothing,
        output_mask,
    )
    if reduction != "none" or weight_bdim is not None or normalizer_bdim is not None:
        return per_sample(_ops.softmax_cross_entropy_backward.default, info, in_dims, args)
    fold, unfold = _position_folding(info.batch_size, input, input_bdim)
    input, target = fold(input, input_bdim), fold(target, target_bdim)
    grad_input, grad_target = _ops.softmax_cross_entropy_backward.default(
        fold(grad_loss, grad_loss_bdim), input, target, weight, fold(max_logit, max_logit_bdim),
        fold(log_sum, log_sum_bdim), normalizer, reduction, ignore_index, label_smoothing, output_mask,
    )
    want_input = output_mask[0]
    want_target = output_mask[1] and target.shape == input.shape
    return (
        unfold(grad_input) if want_input else grad_input,
        unfold(grad_target) if want_target else grad_target,
    ), (0 if want_input else None, 0 if want_target else None)


# ---- autocast: F.cross_entropy's rule, float32 (float64 never cast) ---------------------------------

register_autocast("softmax_cross_entropy_forward", FLOAT32)
register_autocast("softmax_cross_entropy_backward", FLOAT32)
