"""LinearCrossEntropy, everything Python about it: F.cross_entropy(F.linear(input, linear_weight, linear_bias),
target, weight, ignore_index, reduction, label_smoothing) fused with a softcap and a z-loss, the (tokens,
classes) logits never materialised.

Per token i, with z_i = W x_i + b, z'_i = s tanh(z_i / s) (softcap s), lse_i = logsumexp(z'_i), y_i = softmax(z'_i),
a_i the weighted, smoothed target distribution and A_i its sum (csrc/linear_cross_entropy.cpp):
    forward        loss = sum_i a_i . (lse_i - z'_i) / N_ce + lambda sum_i lse_i^2 / N_z   ('mean'; see there)
    backward       G_i = (k_ce (y_i A_i - a_i) + k_z 2 lambda lse_i y_i) (1 - (z'_i / s)^2)
                   dX = G W,  dW = G^T X,  db = sum_i G_i,  d p_i = k_ce (1 - eps) w (lse_i - z'_i)
The forward op computes the gradients for an upstream gradient of 1 chunk by chunk while each chunk of
logits is in cache (scalar reductions); the backward then multiplies them by the upstream gradient. The
backward op recomputes the chunks instead for reduction 'none', probability-target gradients and a second
backward of the same graph.

Forward-mode AD and the backward's own derivatives (double backward, its tangents) go through the composite
of native ops below (_composite_loss, materialising the logits): the vector-Jacobian products of torch.func
give them, and a tangent is the vector-Jacobian product of the (linear) vector-Jacobian product.

The ops torch_manualbp::linear_cross_entropy_forward / linear_cross_entropy_backward (csrc/ops.cpp) get here:
the Functions' backward as their autograd (register_autograd), fake kernels that check shapes as the C++
does (same messages), batching rules for torch.vmap, and autocast kernels (F.linear's rule: the autocast
dtype for the GEMMs).
"""
import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_map

from .._compat import check_traced_functorch, register_vmap
from ._common import (
    check_loss_options,
    LOWER_PRECISION,
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
_is_compiling = torch.compiler.is_compiling

# Bytes of logits held at once by default: one chunk of tokens' (tokens, classes) logits.
DEFAULT_CHUNK_BUDGET = 64 << 20


def chunk_budget_or_default(fn, chunk_budget):
    """The chunk budget in bytes: DEFAULT_CHUNK_BUDGET for None, else a positive int (ValueError, TypeError)."""
    if chunk_budget is None:
        return DEFAULT_CHUNK_BUDGET
    if isinstance(chunk_budget, bool) or not isinstance(chunk_budget, int):
        raise TypeError(f"{fn}(): argument 'chunk_budget' must be int or None, not {type(chunk_budget).__name__}")
    if chunk_budget <= 0:
        raise ValueError(f"{fn}(): chunk_budget (bytes of logits held at once) must be positive, got {chunk_budget}")
    return chunk_budget


def ahead_gradients(input, linear_weight, linear_bias, target, reduction):
    """The grad_mask of the forward op: which of (input, linear_weight, linear_bias) get their gradient computed
    in the forward. Only for the scalar reductions (one upstream gradient), with grad mode on, and not when a
    probability target needs its gradient (the backward then recomputes everything in one pass)."""
    if not torch.is_grad_enabled() or reduction == "none":
        return [False, False, False]
    if target.requires_grad and is_probability_target(input, linear_weight, target):
        return [False, False, False]
    return [input.requires_grad, linear_weight.requires_grad, linear_bias is not None and linear_bias.requires_grad]


def is_probability_target(input, linear_weight, target):
    """Class probabilities: a target of the logits' shape (*, num_classes) (the C++ checks its dtype)."""
    return target.dim() == input.dim() and target.shape == (*input.shape[:-1], linear_weight.shape[0])


def _composite_loss(input, linear_weight, linear_bias, target, weight, options):
    """The loss from the materialised logits, in native differentiable ops: what the kernels compute, used
    for forward-mode AD and for the derivatives of the backward."""
    reduction, ignore_index, label_smoothing, lse_square_scale, softcap = options
    classes = linear_weight.shape[0]
    probability = is_probability_target(input, linear_weight, target)
    logits = F.linear(input.reshape(-1, input.shape[-1]), linear_weight, linear_bias)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    flat_target = target.reshape(-1, classes) if probability else target.reshape(-1).long()
    per_token = F.cross_entropy(
        logits, flat_target, weight=weight, ignore_index=ignore_index, reduction="none",
        label_smoothing=label_smoothing,
    )
    if probability:
        kept = torch.ones(per_token.shape, dtype=torch.bool, device=per_token.device)
        # (a factory call, not per_token.new_tensor: torch 2.4's functorch refuses that under nested vjp)
        ce_normalizer = torch.full((), float(per_token.numel()), dtype=per_token.dtype, device=per_token.device)
    else:
        kept = flat_target != ignore_index
        class_weight = logits.new_ones(logits.shape[-1]) if weight is None else weight
        ce_normalizer = (class_weight[torch.where(kept, flat_target, 0)] * kept).sum()
    z_loss = None
    if lse_square_scale != 0:
        z_loss = lse_square_scale * torch.logsumexp(logits, -1).square() * kept
    if reduction == "none":
        loss = per_token if z_loss is None else per_token + z_loss
        return loss.reshape(target.shape[:-1] if probability else target.shape)
    loss = per_token.sum()
    if reduction == "mean":
        loss = loss / ce_normalizer
    if z_loss is not None:
        loss = loss + (z_loss.sum() / kept.sum() if reduction == "mean" else z_loss.sum())
    return loss


def _differentiable(input, linear_weight, linear_bias, target):
    """Which of (input, linear_weight, linear_bias, target) the loss is differentiable in."""
    return (True, True, linear_bias is not None, is_probability_target(input, linear_weight, target))


def _composite_gradients(grad_loss, input, linear_weight, linear_bias, target, weight, options):
    """(grad_input, grad_linear_weight, grad_linear_bias, grad_target) of _composite_loss for grad_loss
    (None where the loss does not depend on it)."""
    which = _differentiable(input, linear_weight, linear_bias, target)
    primals = [t for t, d in zip((input, linear_weight, linear_bias, target), which) if d]

    def loss_of(*differentiable):
        values = iter(differentiable)
        full = [next(values) if d else t for t, d in zip((input, linear_weight, linear_bias, target), which)]
        return _composite_loss(*full, weight, options)

    _, vjp = torch.func.vjp(loss_of, *primals)
    grads = iter(vjp(grad_loss))
    return tuple(next(grads) if d else None for d in which)


def jvp_of_linear_map(vjp_fn, output, tangents):
    """J t for the map whose vector-Jacobian product is vjp_fn (u -> J^T u, linear in u): the vector-Jacobian
    product of vjp_fn itself, at any u (zero here), with cotangent t. Reverse mode only, so it runs inside a
    Function's jvp, where a forward-mode level is already open."""
    _, transpose = torch.func.vjp(vjp_fn, tree_map(torch.zeros_like, output))
    return transpose(tangents)[0]


class LinearCrossEntropyFunction(torch.autograd.Function):
    """The fused output projection and cross-entropy.

    ``apply(input, linear_weight, linear_bias, target, weight, reduction, ignore_index, label_smoothing,
    lse_square_scale, softcap, grad_mask, chunk_budget)`` (the order of the op linear_cross_entropy_forward)
    returns ``(loss, grad_input, grad_linear_weight, grad_linear_bias)``: the last three are the gradients for
    an upstream gradient of 1 that grad_mask asked the forward to compute ahead (empty otherwise), not
    differentiable. ``loss`` is differentiable with respect to input, linear_weight, linear_bias and
    (probability targets) target; class weights are constants, as in F.cross_entropy.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, linear_weight, linear_bias, target, weight, reduction, ignore_index, label_smoothing,
                lse_square_scale, softcap, grad_mask, chunk_budget):
        return call_kernel(
            _ops.linear_cross_entropy_forward.default, input, linear_weight, linear_bias, target, weight, reduction,
            ignore_index, label_smoothing, lse_square_scale, softcap, grad_mask, chunk_budget,
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        (input, linear_weight, linear_bias, target, weight, reduction, ignore_index, label_smoothing,
         lse_square_scale, softcap, grad_mask, chunk_budget) = inputs
        _, *ahead = output
        ctx.mark_non_differentiable(*ahead)
        ctx.set_materialize_grads(False)
        ctx.options = (reduction, ignore_index, label_smoothing, lse_square_scale, softcap)
        ctx.grad_mask = tuple(grad_mask)
        ctx.chunk_budget = chunk_budget
        # The ahead gradients: in eager mode held by the context alone, handed out (and scaled in place) by
        # the first backward, so that they cost no copy and no memory after it; under torch.compile and
        # torch.func as saved tensors, scaled out of place by every backward.
        ctx.ahead = None
        ctx.ahead_saved = any(grad_mask) and _traced()
        if any(grad_mask) and not ctx.ahead_saved:
            ctx.ahead = ahead
        saved = (input, linear_weight, linear_bias, target, weight)
        ctx.save_for_backward(*saved, *(ahead if ctx.ahead_saved else ()))
        if forward_ad_possible():  # jvp runs during this call or never: save for it only when it may
            ctx.save_for_forward(*saved)

    @staticmethod
    def backward(ctx, grad_loss, *_):
        nothing = (None,) * 12
        if grad_loss is None:
            return nothing
        input, linear_weight, linear_bias, target, weight, *saved_ahead = ctx.saved_tensors
        need_input, need_weight, need_bias, need_target, need_class_weight = ctx.needs_input_grad[:5]
        if need_class_weight:  # as torch's nll_loss: class weights are constants
            raise RuntimeError("linear_cross_entropy: the derivative for 'weight' is not implemented")
        need_bias = need_bias and linear_bias is not None
        need_target = need_target and is_probability_target(input, linear_weight, target)
        if not (need_input or need_weight or need_bias or need_target):
            return nothing
        mask = [need_input, need_weight, need_bias, need_target]
        tensors = (grad_loss, input, linear_weight, linear_bias, target, weight)
        if torch.is_grad_enabled() or functorch_active():
            # create_graph / torch.func: the backward op's own Function, which has derivatives and tangents.
            grads = LinearCrossEntropyBackwardFunction.apply(
                *tensors, NonTensorArgs((*ctx.options, mask, ctx.chunk_budget))
            )
        elif not need_target and (ctx.ahead is not None or saved_ahead) and all(
            ahead or not needed for ahead, needed in zip(ctx.grad_mask, mask)
        ):
            grads = (*_scale_ahead(ctx, saved_ahead, grad_loss, input.dtype, mask), None)
        else:
            grads = call_kernel(
                _ops.linear_cross_entropy_backward.default, *tensors, *ctx.options, mask, ctx.chunk_budget
            )
        return tuple(g if wanted else None for g, wanted in zip(grads, mask)) + (None,) * 8

    @staticmethod
    def jvp(ctx, input_tangent, weight_tangent, bias_tangent, target_tangent, *_):
        # loss' = J t for the composite loss: the vector-Jacobian product of its vector-Jacobian product.
        input, linear_weight, linear_bias, target, weight = ctx.saved_tensors[:5]
        which = _differentiable(input, linear_weight, linear_bias, target)
        primals = (input, linear_weight, linear_bias, target)
        tangents = (input_tangent, weight_tangent, bias_tangent, target_tangent)
        kept = [i for i, d in enumerate(which) if d]

        def loss_of(*differentiable):
            full = list(primals)
            for i, value in zip(kept, differentiable):
                full[i] = value
            return _composite_loss(*full, weight, ctx.options)

        loss, vjp = torch.func.vjp(loss_of, *(primals[i] for i in kept))
        filled = tuple(torch.zeros_like(primals[i]) if tangents[i] is None else tangents[i] for i in kept)
        tangent = jvp_of_linear_map(vjp, loss, filled)
        return tangent, None, None, None


def _traced():
    """Whether tensors here may be traced rather than computed (torch.compile, torch.func, a dispatch mode such as
    make_fx's or FakeTensorMode): then the ahead gradients go through saved tensors, never mutated."""
    return _is_compiling() or functorch_active() or torch._C._len_torch_dispatch_stack() > 0


def _scale_ahead(ctx, saved_ahead, grad_loss, dtype, mask):
    """The ahead gradients times the upstream gradient g, in the input's dtype: in place on the first eager
    backward (the context owns them, and forgets them: a second backward recomputes), out of place from the
    saved tensors otherwise. On the CPU, g == 1 (a plain loss.backward()) costs nothing."""
    in_place = ctx.ahead is not None
    ahead = ctx.ahead if in_place else saved_ahead
    ctx.ahead = None
    unit = in_place and grad_loss.device.type == "cpu" and grad_loss.item() == 1.0
    scaled = []
    for gradient, wanted in zip(ahead, mask):
        if not wanted:
            scaled.append(None)
        elif gradient.dtype == dtype and in_place:
            scaled.append(gradient if unit else gradient.mul_(grad_loss))
        else:
            out = torch.empty(gradient.shape, dtype=dtype, device=gradient.device)
            scaled.append(torch.mul(gradient, grad_loss, out=out))
    return scaled


class LinearCrossEntropyBackwardFunction(torch.autograd.Function):
    """(grad_input, grad_linear_weight, grad_linear_bias, grad_target) = linear_cross_entropy_backward(grad_loss,
    input, linear_weight, linear_bias, target, ...), differentiable in grad_loss, input, linear_weight,
    linear_bias and (probability targets) target, through the composite loss: its derivatives are the
    vector-Jacobian products of _composite_gradients, its tangents their transposes (jvp_of_linear_map).
    Outputs that output_mask leaves out are empty tensors, with no gradient and no tangent.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(grad_loss, input, linear_weight, linear_bias, target, weight, non_tensor_args):
        return _ops.linear_cross_entropy_backward.default(
            grad_loss, input, linear_weight, linear_bias, target, weight, *non_tensor_args.values
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        *tensors, non_tensor_args = inputs
        ctx.save_for_backward(*tensors)
        ctx.save_for_forward(*tensors)
        *options, ctx.output_mask, _ = non_tensor_args.values
        ctx.options = tuple(options)
        ctx.set_materialize_grads(False)

    @staticmethod
    def _linearised(ctx):
        """(gradients, vjp) of _composite_gradients at the saved point, over the differentiable tensors (grad_loss
        first), and their positions among (grad_loss, input, linear_weight, linear_bias, target)."""
        check_traced_functorch("the double backward of linear_cross_entropy")
        grad_loss, input, linear_weight, linear_bias, target, weight = ctx.saved_tensors
        points = (grad_loss, input, linear_weight, linear_bias, target)
        kept = [0] + [i + 1 for i, d in enumerate(_differentiable(input, linear_weight, linear_bias, target)) if d]

        def gradients_of(*differentiable):
            full = list(points)
            for i, value in zip(kept, differentiable):
                full[i] = value
            grads = _composite_gradients(*full, weight, ctx.options)
            return tuple(g for g in grads if g is not None)

        gradients, vjp = torch.func.vjp(gradients_of, *(points[i] for i in kept))
        return gradients, vjp, kept, points

    @staticmethod
    def backward(ctx, *grad_grads):
        gradients, vjp, kept, points = LinearCrossEntropyBackwardFunction._linearised(ctx)
        # One cotangent per gradient that _composite_gradients returns (the differentiable ones, in order).
        cotangents = []
        returned = iter(gradients)
        for wanted, differentiable, grad_grad in zip(ctx.output_mask, _differentiable(*points[1:]), grad_grads):
            if differentiable:
                gradient = next(returned)
                cotangents.append(grad_grad if wanted and grad_grad is not None else torch.zeros_like(gradient))
        result = [None] * 5
        for i, value in zip(kept, vjp(tuple(cotangents))):
            result[i] = value
        return (*result, None, None)

    @staticmethod
    def jvp(ctx, *tangents):
        gradients, vjp, kept, points = LinearCrossEntropyBackwardFunction._linearised(ctx)
        filled = tuple(torch.zeros_like(points[i]) if tangents[i] is None else tangents[i] for i in kept)
        out_tangents = iter(jvp_of_linear_map(vjp, gradients, filled))
        nothing = points[1].new_empty((0,))
        result = []
        for wanted, differentiable in zip(ctx.output_mask, _differentiable(*points[1:])):
            tangent = next(out_tangents) if differentiable else None
            result.append(tangent if wanted and differentiable else nothing)
        return tuple(result)


torch.library.register_autograd(
    "torch_manualbp::linear_cross_entropy_forward",
    LinearCrossEntropyFunction.backward,
    setup_context=LinearCrossEntropyFunction.setup_context,
)
register_backward_op_autograd("torch_manualbp::linear_cross_entropy_backward", LinearCrossEntropyBackwardFunction, 6)


# ---- fake kernels: shapes and dtypes for torch.compile and torch.export --------------------------------
def _shapes(op, input, linear_weight, linear_bias, target, weight, reduction, ignore_index, label_smoothing,
            lse_square_scale, softcap, chunk_budget):
    """The checks of csrc/linear_cross_entropy_args.cpp (same messages); returns (token shape, loss shape)."""
    torch._check_value(
        reduction in ("none", "mean", "sum"),
        lambda: f"{reduction} is not a valid value for reduction (expected 'none', 'mean' or 'sum')",
    )
    check_loss_options(op, label_smoothing, lse_square_scale, softcap)
    torch._check(
        chunk_budget > 0,
        lambda: f"{op}: expected chunk_budget (bytes of logits held at once) > 0, but got chunk_budget={chunk_budget}",
    )
    torch._check_type(
        input.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16),
        lambda: f"{op}: expected input to be a floating-point tensor (float32, float64, bfloat16 or float16), but got input of dtype {input.dtype}",
    )
    torch._check(
        input.dim() >= 1,
        lambda: f"{op}: expected input of shape (*, in_features) with at least 1 dimension, but got input of shape {list(input.shape)}",
    )
    torch._check(
        linear_weight.dtype == input.dtype,
        lambda: f"{op}: expected linear_weight to have the same dtype as input ({input.dtype}), but got linear_weight of dtype {linear_weight.dtype}",
    )
    torch._check(
        linear_weight.dim() == 2,
        lambda: f"{op}: expected linear_weight of shape (num_classes, in_features) with 2 dimensions, but got linear_weight of shape {list(linear_weight.shape)}",
    )
    torch._check(
        input.shape[-1] == linear_weight.shape[1],
        lambda: f"{op}: expected input.size(-1) to equal linear_weight.size(1) (in_features = {linear_weight.shape[1]}), but got input of shape {list(input.shape)} and linear_weight of shape {list(linear_weight.shape)}",
    )
    classes = linear_weight.shape[0]
    tokens = list(input.shape[:-1])
    if linear_bias is not None:
        _check_class_vector(op, "linear_bias", linear_bias, input, classes, "")
    if is_probability_target(input, linear_weight, target):
        torch._check(
            target.dtype == input.dtype,
            lambda: f"{op}: expected target (class probabilities) to have the same dtype as input ({input.dtype}), but got target (class probabilities) of dtype {target.dtype}",
        )
        torch._check(
            ignore_index < 0,
            lambda: f"{op}: ignore_index is not supported for class-probability targets; expected a negative ignore_index (e.g. the default -100), but got ignore_index={ignore_index}",
        )
    else:
        torch._check(
            target.dtype in (torch.int64, torch.uint8),
            lambda: f"{op}: expected target of dtype int64 or uint8 (class indices, the input's shape without in_features) or of the input's floating dtype and the logits' shape (class probabilities), but got target of dtype {target.dtype} and shape {list(target.shape)} for input of shape {list(input.shape)}",
        )
        torch._check(
            list(target.shape) == tokens,
            lambda: f"{op}: expected target of shape {tokens} (class indices: the input's shape without in_features) or {tokens + [classes]} (class probabilities), but got target of shape {list(target.shape)} for input of shape {list(input.shape)}",
        )
    if weight is not None:
        _check_class_vector(op, "weight", weight, input, classes, ", one weight per class")
    return tokens, (tokens if reduction == "none" else [])


def _check_class_vector(op, name, vector, input, classes, meaning):
    """A tensor of one number per class (linear_bias, weight): the input's dtype, shape (num_classes,)."""
    torch._check(
        vector.dtype == input.dtype,
        lambda: f"{op}: expected {name} to have the same dtype as input ({input.dtype}), but got {name} of dtype {vector.dtype}",
    )
    torch._check(
        vector.dim() == 1 and vector.shape[0] == classes,
        lambda: f"{op}: expected {name} of shape (num_classes,) = ({classes},){meaning}, but got {name} of shape {list(vector.shape)}",
    )


def _accumulation_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@torch.library.register_fake("torch_manualbp::linear_cross_entropy_forward")
def _forward_fake(input, linear_weight, linear_bias, target, weight, reduction, ignore_index, label_smoothing,
                  lse_square_scale, softcap, grad_mask, chunk_budget):
    op = "linear_cross_entropy"
    _, loss_shape = _shapes(op, input, linear_weight, linear_bias, target, weight, reduction, ignore_index,
                            label_smoothing, lse_square_scale, softcap, chunk_budget)
    torch._check(
        reduction != "none" or not any(grad_mask),
        lambda: f"{op}: gradients computed in the forward (grad_mask) need reduction 'mean' or 'sum': with reduction "
        f"'none' the backward op computes them from the upstream gradient, but got grad_mask={list(grad_mask)}",
    )
    acc = _accumulation_dtype(input.dtype)
    nothing = input.new_empty((0,))
    return (
        input.new_empty(loss_shape),
        input.new_empty(input.shape) if grad_mask[0] else nothing,
        input.new_empty(linear_weight.shape) if grad_mask[1] else input.new_empty((0,)),
        input.new_empty((linear_weight.shape[0],), dtype=acc) if grad_mask[2] and linear_bias is not None
        else input.new_empty((0,)),
    )


@torch.library.register_fake("torch_manualbp::linear_cross_entropy_backward")
def _backward_fake(grad_loss, input, linear_weight, linear_bias, target, weight, reduction, ignore_index,
                   label_smoothing, lse_square_scale, softcap, output_mask, chunk_budget):
    op = "linear_cross_entropy_backward"
    _, loss_shape = _shapes(op, input, linear_weight, linear_bias, target, weight, reduction, ignore_index,
                            label_smoothing, lse_square_scale, softcap, chunk_budget)
    torch._check(
        list(grad_loss.shape) == loss_shape,
        lambda: f"{op}: expected grad_loss of shape {loss_shape}, but got grad_loss of shape {list(grad_loss.shape)}",
    )
    probability = is_probability_target(input, linear_weight, target)
    return (
        input.new_empty(input.shape) if output_mask[0] else input.new_empty((0,)),
        input.new_empty(linear_weight.shape) if output_mask[1] else input.new_empty((0,)),
        input.new_empty((linear_weight.shape[0],)) if output_mask[2] and linear_bias is not None
        else input.new_empty((0,)),
        input.new_empty(target.shape) if output_mask[3] and probability else input.new_empty((0,)),
    )


# ---- batching rules (torch.vmap) ----------------------------------------------------------------------
# The op takes any leading token dims, so a vmapped input and target fold into them when the loss is per
# token ('none') and the parameters are shared; everything else (per-sample reductions, per-sample weights
# or weight gradients) runs per sample.
@register_vmap("torch_manualbp::linear_cross_entropy_forward")
def _forward_vmap(info, in_dims, input, linear_weight, linear_bias, target, weight, reduction, ignore_index,
                  label_smoothing, lse_square_scale, softcap, grad_mask, chunk_budget):
    input_bdim, weight_bdims, target_bdim = in_dims[0], (in_dims[1], in_dims[2], in_dims[4]), in_dims[3]
    args = (input, linear_weight, linear_bias, target, weight, reduction, ignore_index, label_smoothing,
            lse_square_scale, softcap, grad_mask, chunk_budget)
    if reduction != "none" or any(d is not None for d in weight_bdims):
        return per_sample(_ops.linear_cross_entropy_forward.default, info, in_dims, args)
    batch_size = info.batch_size
    results = _ops.linear_cross_entropy_forward.default(
        batch_first(input, input_bdim, batch_size), linear_weight, linear_bias,
        batch_first(target, target_bdim, batch_size), *args[4:],
    )
    return results, (0, None, None, None)


@register_vmap("torch_manualbp::linear_cross_entropy_backward")
def _backward_vmap(info, in_dims, grad_loss, input, linear_weight, linear_bias, target, weight, reduction,
                   ignore_index, label_smoothing, lse_square_scale, softcap, output_mask, chunk_budget):
    args = (grad_loss, input, linear_weight, linear_bias, target, weight, reduction, ignore_index, label_smoothing,
            lse_square_scale, softcap, output_mask, chunk_budget)
    shared = all(in_dims[i] is None for i in (2, 3, 5))
    if reduction != "none" or not shared or output_mask[1] or output_mask[2]:
        return per_sample(_ops.linear_cross_entropy_backward.default, info, in_dims, args)
    batch_size = info.batch_size
    grad_input, grad_weight, grad_bias, grad_target = _ops.linear_cross_entropy_backward.default(
        batch_first(grad_loss, in_dims[0], batch_size), batch_first(input, in_dims[1], batch_size), linear_weight,
        linear_bias, batch_first(target, in_dims[4], batch_size), *args[5:],
    )
    want_target = output_mask[3] and grad_target.numel() > 0
    return (grad_input, grad_weight, grad_bias, grad_target), (
        0 if output_mask[0] else None, None, None, 0 if want_target else None,
    )


register_autocast("linear_cross_entropy_forward", LOWER_PRECISION)
register_autocast("linear_cross_entropy_backward", LOWER_PRECISION)
