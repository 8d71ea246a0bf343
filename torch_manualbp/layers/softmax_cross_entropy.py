"""SoftmaxCrossEntropy, everything Python about it: F.cross_entropy(x, target, weight, ignore_index,
reduction, label_smoothing) fused, the class dim 1 of x (C,), (N, C) or (N, C, d1, ..., dK), with two
options of language-model heads: a softcap of the logits and a z-loss.

Per position i, with u_i = s tanh(x_i / s) the logits the softmax sees (softcap s; u = x without it),
m_i = max_c u_ic, s_i = sum_c exp(u_ic - m_i), lse_i = m_i + log s_i, a_i the weighted, smoothed target
distribution, A_i its sum, w the class weights and lambda the z-loss scale:
    forward        loss_i = sum_c a_ic (lse_i - u_ic) + lambda lse_i^2 (z-loss: non-ignored positions),
                   reduced ('mean': the cross-entropy over the normalizer, the z-loss over the number of
                   non-ignored positions)                             (csrc/softmax_cross_entropy.cpp)
    backward       grad_input = (g_i (softmax(u_i) A_i - a_i) + gz_i 2 lambda lse_i softmax(u_i)) (1 - (u_i / s)^2)
                   grad_target = g_i (1 - eps) w (lse_i - u_i)
    forward AD     SoftmaxCrossEntropyFunction.jvp
    double backward and the backward's tangents: SoftmaxCrossEntropyBackwardFunction below

The ops torch_manualbp::softmax_cross_entropy_forward / softmax_cross_entropy_backward (csrc/ops.cpp) get
here: the Functions' backward as their autograd (register_autograd), fake kernels that check shapes as
the C++ does (same messages), batching rules for torch.vmap, and autocast kernels (F.cross_entropy's
rule: float32).
"""
from types import SimpleNamespace

import torch

from .._compat import register_vmap
from ._common import (
    check_loss_options,
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
    """F.cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing), fused, with a softcap
    of the logits and a z-loss.

    ``apply(input, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale=0.0,
    softcap=None)`` (the order of the op softmax_cross_entropy_forward) returns ``(loss, max_logit,
    log_sum, normalizer)``; only ``loss`` is differentiable (with respect to ``input``, and to ``target``
    when it holds class probabilities).

    Backward (csrc/softmax_cross_entropy.cpp), per position i, from the saved m_i = max_logit and
    log s_i = log_sum of the softcapped logits u_i = s tanh(x_i / s) (lse_i = m_i + log s_i,
    y_i = softmax(u_i) = exp(u_i - m_i) / s_i):
        grad_input  = (g_i (y_i A_i - a_i) + gz_i lse_i y_i) (1 - (u_i / s)^2)
        grad_target = g_i (1 - eps) w (lse_i - u_i)
    with a_i the weighted, smoothed target distribution, A_i its sum, g_i = grad_loss / normalizer and
    gz_i = grad_loss c_i, c_i = 2 lambda kappa_i / N_z the z-loss's coefficient (_z_loss_coefficient).
    Forward-mode (jvp), with tangents x' and (probability targets) p', u' = (1 - (u / s)^2) x', <.,.> over
    classes:
        loss_i' = (<y A_i - a_i, u_i'> + (1 - eps) <w p_i', lse_i - u_i>) / normalizer + c_i lse_i <y, u_i'>,
    reduced as the loss
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale=0.0, softcap=None):
        return call_kernel(
            _ops.softmax_cross_entropy_forward.default, input, target, weight, reduction, ignore_index,
            label_smoothing, lse_square_scale, softcap,
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, reduction, ignore_index, label_smoothing, *options = inputs
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
        ctx.lse_square_scale, ctx.softcap = _loss_options(*options)

    @staticmethod
    def backward(ctx, grad_loss, grad_max_logit, grad_log_sum, grad_normalizer):
        nothing = (None,) * 8
        if grad_loss is None:
            return nothing
        input, target, weight, max_logit, log_sum, normalizer = ctx.saved_tensors
        need_input, need_target, need_weight = ctx.needs_input_grad[:3]
        if need_weight:  # as torch's nll_loss: class weights are constants
            raise RuntimeError("softmax_cross_entropy: the derivative for 'weight' is not implemented")
        if not (need_input or need_target):
            return nothing
        options = (
            ctx.reduction, ctx.ignore_index, ctx.label_smoothing, [need_input, need_target], ctx.lse_square_scale,
            ctx.softcap,
        )
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
        return (grad_input if need_input else None, grad_target if need_target else None) + (None,) * 6

    @staticmethod
    def jvp(ctx, input_tangent, target_tangent, *_):
        # No tangent from the class weights: constants, as in backward. (torch.func hands every input a
        # tangent, zeros where it has none, so a weight tangent cannot be refused here as in backward.)
        input, target, weight, max_logit, log_sum, normalizer = ctx.saved_tensors
        class_dim = 0 if input.dim() == 1 else 1
        eps = ctx.label_smoothing
        a, A, class_weight = _softmax_cross_entropy_coefficients(input, target, weight, ctx.ignore_index, eps)
        logits, softcap_grad, _ = _softcapped_logits(input, ctx.softcap)
        # (m - u) + log s: in this order, exact where the softmax is not negligible.
        lse_minus_logits = (max_logit.unsqueeze(class_dim) - logits) + log_sum.unsqueeze(class_dim)
        lse_minus_logits = lse_minus_logits.to(input.dtype)
        y = (-lse_minus_logits).exp()
        per_class = torch.zeros_like(input)
        logit_tangent = None
        if input_tangent is not None:
            logit_tangent = input_tangent if softcap_grad is None else softcap_grad * input_tangent
            per_class = per_class + (y * A - a) * logit_tangent
        if target_tangent is not None and _is_probability_target(input, target):
            per_class = per_class + (1 - eps) * class_weight * target_tangent * lse_minus_logits
        per_position = per_class.sum(class_dim) / normalizer.to(input.dtype)
        z_coefficient = _z_loss_coefficient(input, target, ctx.ignore_index, ctx.reduction, ctx.lse_square_scale)
        if z_coefficient is not None and logit_tangent is not None:
            lse = (max_logit + log_sum).to(input.dtype)
            per_position = per_position + z_coefficient * lse * (y * logit_tangent).sum(class_dim)
        loss_tangent = per_position if ctx.reduction == "none" else per_position.sum()
        return loss_tangent, None, None, None  # max_logit, log_sum, normalizer: non-differentiable


def _loss_options(lse_square_scale=0.0, softcap=None):
    """(lse_square_scale, softcap) from the trailing arguments of an op call, which may leave them out (the
    dispatcher drops arguments equal to their defaults)."""
    return lse_square_scale, softcap


def _is_probability_target(input, target):
    """Class probabilities: a target of the input's shape (the C++ checks made sure it is floating)."""
    return target.shape == input.shape


def _softcapped_logits(input, softcap):
    """(u, du/dx, d2u/dx2) of the logits the softmax sees, u = softcap * tanh(x / softcap):
    du/dx = 1 - (u / softcap)^2, d2u/dx2 = -2 u (du/dx) / softcap^2. Without a softcap: (input, None, None)."""
    if softcap is None:
        return input, None, None
    logits = softcap * torch.tanh(input / softcap)
    first = 1 - (logits / softcap) ** 2
    return logits, first, -2 * logits * first / softcap**2


def _z_loss_coefficient(input, target, ignore_index, reduction, lse_square_scale):
    """c = 2 lambda kappa / N_z per position (the input's shape without the class dim), the derivative of the
    reduced loss's z-loss term lambda sum_i kappa_i lse_i^2 / N_z with respect to lse_i over lse_i; None
    without a z-loss. kappa: 1 where the z-loss counts (index targets: not ignore_index; probability
    targets: every position); N_z: their number for 'mean', 1 for 'sum' and 'none'."""
    if not lse_square_scale:
        return None
    class_dim = 0 if input.dim() == 1 else 1
    if _is_probability_target(input, target):
        kept = torch.ones(input.shape[:class_dim] + input.shape[class_dim + 1:], dtype=torch.bool, device=input.device)
    else:
        kept = target.long() != ignore_index
    scale = torch.tensor(2 * lse_square_scale, dtype=input.dtype, device=input.device)
    if reduction == "mean":
        scale = scale / kept.sum().to(input.dtype)
    return torch.where(kept, scale, torch.zeros_like(scale))


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
    are (their sum lse has d lse / d u = y).

    With u = s tanh(x / s) (u = x without a softcap), d = du/dx = 1 - (u / s)^2, d' = d2u/dx2 = -2 u d / s^2,
    y = softmax(u), g = grad_loss / normalizer and gz = grad_loss c per position (c the z-loss's coefficient,
    _z_loss_coefficient; gz = 0 without a z-loss), B = g A + gz lse, h = y B - g a, GI = grad_grad_input,
    GT = grad_grad_target, W = GI d, <.,.> sums over the class dim:
        grad_input  = h d                          grad_target = g (1 - eps) w (lse - u)
        d/d grad_loss = (<W, y A - a> + <GT, (1 - eps) w (lse - u)>) / normalizer + c lse <W, y>  (summed to its shape)
        d/d x         = d (B y (W - <W, y>) + gz y <W, y>) + GI h d'  +  d g (1 - eps) (y <GT, w> - GT w)
        d/d p         = g (1 - eps) w (<W, y> - W)           (probability targets: A, a depend on p)
    Forward-mode, with tangents g' = grad_loss' / normalizer, gz' = grad_loss' c, x', p', u' = d x',
    lse' = <y, u'>, y' = y (u' - lse'), a' = (1 - eps) w p' and A' its sum:
        h'            = y' B + y (g' A + g A' + gz' lse + gz lse') - g' a - g a'
        grad_input'   = h' d + h d' x'
        grad_target'  = (1 - eps) w (g' (lse - u) + g (lse' - u'))
    Without a softcap and a z-loss these are the derivatives of g (y A - a). Built from differentiable torch
    ops, so higher derivatives exist as well.
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
        ctx.reduction, ctx.ignore_index, ctx.label_smoothing, ctx.output_mask, *options = non_tensor_args.values
        ctx.lse_square_scale, ctx.softcap = _loss_options(*options)
        ctx.set_materialize_grads(False)

    @staticmethod
    def _per_position(ctx, value, class_dim):
        """A per-position value ('none': grad_loss's shape) broadcastable against the input."""
        return value.unsqueeze(class_dim) if ctx.reduction == "none" else value

    @staticmethod
    def _recompute(ctx):
        """What backward and jvp both start from, rebuilt from the saved tensors (the letters of the class
        docstring; gz and c None without a z-loss, d and d' None without a softcap)."""
        grad_loss, input, target, weight, normalizer = ctx.saved_tensors
        class_dim = 0 if input.dim() == 1 else 1
        eps = ctx.label_smoothing
        a, A, class_weight = _softmax_cross_entropy_coefficients(input, target, weight, ctx.ignore_index, eps)
        logits, softcap_grad, softcap_grad2 = _softcapped_logits(input, ctx.softcap)
        log_y = torch.log_softmax(logits, class_dim)
        y = log_y.exp()
        g = SoftmaxCrossEntropyBackwardFunction._per_position(ctx, grad_loss / normalizer, class_dim)
        lse = torch.logsumexp(logits, class_dim, keepdim=True)
        z_coefficient = _z_loss_coefficient(input, target, ctx.ignore_index, ctx.reduction, ctx.lse_square_scale)
        gz = None
        B = g * A
        if z_coefficient is not None:
            z_coefficient = z_coefficient.unsqueeze(class_dim)
            gz = SoftmaxCrossEntropyBackwardFunction._per_position(ctx, grad_loss, class_dim) * z_coefficient
            B = B + gz * lse
        return SimpleNamespace(
            input=input, normalizer=normalizer, class_dim=class_dim, eps=eps, a=a, A=A, class_weight=class_weight,
            probability=_is_probability_target(input, target), d=softcap_grad, d2=softcap_grad2, y=y,
            lse_minus_logits=-log_y, lse=lse, g=g, gz=gz, z_coefficient=z_coefficient, B=B, h=y * B - g * a,
        )

    @staticmethod
    def backward(ctx, grad_grad_input, grad_grad_target):
        r = SoftmaxCrossEntropyBackwardFunction._recompute(ctx)
        class_dim, keep = r.class_dim, 1 - r.eps
        per_position = torch.zeros_like(r.input)  # summed over the classes, then divided by the normalizer
        z_per_position = None
        grad_u = torch.zeros_like(r.input)  # d/du of everything but the d' term, times d below
        grad_x = torch.zeros_like(r.input)
        grad_p = None
        if ctx.output_mask[0] and grad_grad_input is not None:
            w_ = grad_grad_input if r.d is None else grad_grad_input * r.d
            w_dot_y = (w_ * r.y).sum(class_dim, keepdim=True)
            per_position = per_position + w_ * (r.y * r.A - r.a)
            grad_u = grad_u + r.B * r.y * (w_ - w_dot_y)
            if r.gz is not None:
                grad_u = grad_u + r.gz * r.y * w_dot_y
                z_per_position = (r.z_coefficient * r.lse * w_dot_y).squeeze(class_dim)
            if r.d2 is not None:
                grad_x = grad_x + grad_grad_input * r.h * r.d2
            if r.probability:
                grad_p = r.g * keep * r.class_weight * (w_dot_y - w_)
        if r.probability and ctx.output_mask[1] and grad_grad_target is not None:
            gt_w = grad_grad_target * r.class_weight
            per_position = per_position + gt_w * keep * r.lse_minus_logits
            grad_u = grad_u + r.g * keep * (r.y * gt_w.sum(class_dim, keepdim=True) - gt_w)
        grad_x = grad_x + (grad_u if r.d is None else grad_u * r.d)
        per_position = per_position.sum(class_dim) / r.normalizer
        if z_per_position is not None:
            per_position = per_position + z_per_position
        grad_grad_loss = per_position if ctx.reduction == "none" else per_position.sum()
        return grad_grad_loss, grad_x, grad_p, None, None, None, None, None

    @staticmethod
    def jvp(ctx, grad_loss_tangent, input_tangent, target_tangent, *_):
        r = SoftmaxCrossEntropyBackwardFunction._recompute(ctx)
        class_dim, keep = r.class_dim, 1 - r.eps
        h_tangent = torch.zeros_like(r.input)
        target_part = torch.zeros_like(r.input)  # g (lse' - u') + g' (lse - u)
        if input_tangent is not None:
            logit_tangent = input_tangent if r.d is None else r.d * input_tangent
            lse_tangent = (r.y * logit_tangent).sum(class_dim, keepdim=True)
            h_tangent = h_tangent + r.y * (logit_tangent - lse_tangent) * r.B
            if r.gz is not None:
                h_tangent = h_tangent + r.y * r.gz * lse_tangent
            target_part = target_part + r.g * (lse_tangent - logit_tangent)
        if r.probability and target_tangent is not None:
            a_tangent = keep * r.class_weight * target_tangent
            h_tangent = h_tangent + r.g * (r.y * a_tangent.sum(class_dim, keepdim=True) - a_tangent)
        if grad_loss_tangent is not None:
            g_tangent = SoftmaxCrossEntropyBackwardFunction._per_position(
                ctx, grad_loss_tangent / r.normalizer, class_dim
            )
            h_tangent = h_tangent + g_tangent * (r.y * r.A - r.a)
            if r.gz is not None:
                gz_tangent = SoftmaxCrossEntropyBackwardFunction._per_position(ctx, grad_loss_tangent, class_dim)
                h_tangent = h_tangent + r.y * gz_tangent * r.z_coefficient * r.lse
            target_part = target_part + g_tangent * r.lse_minus_logits
        nothing = r.input.new_empty((0,))
        grad_input_tangent = nothing
        if ctx.output_mask[0]:
            grad_input_tangent = h_tangent if r.d is None else h_tangent * r.d
            if r.d2 is not None and input_tangent is not None:
                grad_input_tangent = grad_input_tangent + r.h * r.d2 * input_tangent
        grad_target_tangent = nothing
        if r.probability and ctx.output_mask[1]:
            grad_target_tangent = keep * r.class_weight * target_part
        return grad_input_tangent, grad_target_tangent


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


def _softmax_cross_entropy_shapes(
    op, input, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale, softcap
):
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
    check_loss_options(op, label_smoothing, lse_square_scale, softcap)
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
def _softmax_cross_entropy_forward_fake(
    input, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale=0.0, softcap=None
):
    positions, loss_shape, stats_dtype = _softmax_cross_entropy_shapes(
        "softmax_cross_entropy", input, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale,
        softcap,
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
    output_mask, lse_square_scale=0.0, softcap=None,
):
    op = "softmax_cross_entropy_backward"
    positions, loss_shape, stats_dtype = _softmax_cross_entropy_shapes(
        op, input, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale, softcap
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
def _softmax_cross_entropy_forward_vmap(
    info, in_dims, input, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale=0.0, softcap=None
):
    """reduction='none' folds the samples into the positions (the normalizer is 1 for all); 'mean' and
    'sum' reduce over each sample, with each sample's normalizers, and run per sample."""
    input_bdim, target_bdim, weight_bdim = in_dims[:3]
    args = (input, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale, softcap)
    if reduction != "none" or weight_bdim is not None:
        return per_sample(_ops.softmax_cross_entropy_forward.default, info, in_dims, args)
    fold, unfold = _position_folding(info.batch_size, input, input_bdim)
    loss, max_logit, log_sum, normalizer = _ops.softmax_cross_entropy_forward.default(
        fold(input, input_bdim), fold(target, target_bdim), weight, reduction, ignore_index, label_smoothing,
        lse_square_scale, softcap,
    )
    return (unfold(loss), unfold(max_logit), unfold(log_sum), normalizer), (0, 0, 0, None)


@register_vmap("torch_manualbp::softmax_cross_entropy_backward")
def _softmax_cross_entropy_backward_vmap(
    info, in_dims, grad_loss, input, target, weight, max_logit, log_sum, normalizer, reduction, ignore_index,
    label_smoothing, output_mask, lse_square_scale=0.0, softcap=None,
):
    grad_loss_bdim, input_bdim, target_bdim, weight_bdim, max_logit_bdim, log_sum_bdim, normalizer_bdim = in_dims[:7]
    args = (
        grad_loss, input, target, weight, max_logit, log_sum, normalizer, reduction, ignore_index, label_smoothing,
        output_mask, lse_square_scale, softcap,
    )
    if reduction != "none" or weight_bdim is not None or normalizer_bdim is not None:
        return per_sample(_ops.softmax_cross_entropy_backward.default, info, in_dims, args)
    fold, unfold = _position_folding(info.batch_size, input, input_bdim)
    input, target = fold(input, input_bdim), fold(target, target_bdim)
    grad_input, grad_target = _ops.softmax_cross_entropy_backward.default(
        fold(grad_loss, grad_loss_bdim), input, target, weight, fold(max_logit, max_logit_bdim),
        fold(log_sum, log_sum_bdim), normalizer, reduction, ignore_index, label_smoothing, output_mask,
        lse_square_scale, softcap,
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
