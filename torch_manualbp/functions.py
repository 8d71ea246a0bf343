"""The autograd.Function of each layer: forward and backward call the C++ ops (torch.ops.torch_manualbp).

The same backward is registered on the forward op with torch.library.register_autograd, so that the op
called directly (torch.compile, opcheck, export) and the Function give one gradient. The backward ops
are wrapped in autograd.Functions of their own, registered on the backward ops the same way: their
derivatives (double backward) and tangents (forward-mode AD) are written out below from the same
formulas as the kernels, in differentiable torch ops, so that higher derivatives exist as well.

torch.func: every Function here has a separate setup_context, generate_vmap_rule=True (forward, backward
and jvp run under vmap, where the ops have batching rules, _vmap.py) and a jvp (forward-mode AD: jvp,
jacfwd, hessian = jacfwd(jacrev)).
"""
import dataclasses

import torch
import torch.nn.functional as F

from . import _C
from ._compat import check_nested_vmap

_ops = torch.ops.torch_manualbp
_linear_sigmoid_forward = _ops.linear_sigmoid_forward.default
_linear_sigmoid_backward = _ops.linear_sigmoid_backward.default
_functorch_active = torch._C._are_functorch_transforms_active
_unwrap_if_dead = torch._C._functorch.unwrap_if_dead
_is_compiling = torch.compiler.is_compiling


def _may_skip_autograd():
    """Whether an op may be called below autograd: grad mode off (inside Function.forward, and in a
    backward without create_graph), in eager mode, outside functorch transforms. There the Python
    autograd wrapper that register_autograd (below) puts on each op would only redispatch, and it costs
    more than the kernels of a small layer; elsewhere (double backward, torch.compile, torch.func) the
    op runs as usual."""
    return not (torch.is_grad_enabled() or _is_compiling() or _functorch_active())


def _call_kernel(op, *args):
    """op(*args), below autograd where _may_skip_autograd() allows."""
    if not _may_skip_autograd():
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def _forward_ad_possible():
    """Whether a jvp may be asked of a Function being applied now: a forward-AD dual level is open
    (torch.autograd.forward_ad) or a functorch transform (torch.func.jvp, jacfwd, ...) is active."""
    return torch.autograd.forward_ad._current_level >= 0 or _functorch_active()


_function_base_apply = torch._C._FunctionBase.__dict__["apply"]  # the C++ apply behind Function.apply


@dataclasses.dataclass(frozen=True)
class NonTensorArgs:
    """The trailing non-tensor arguments of a backward op (sizes, masks, options), as one opaque value.

    torch.func flattens the arguments of an autograd.Function into pytree leaves, and its jvp under vmap
    (jacfwd of a backward: torch.func.hessian) then pairs the tangents with the wrong in_dims when an
    argument is a list (torch/_functorch/autograd_function.py, get_tangents_in_dims). One leaf avoids it.
    """

    values: tuple


def apply_layer(function, op, *args):
    """Runs a layer: function.apply in eager mode, the op itself under torch.compile and torch.export.

    Dynamo graph-breaks on an autograd.Function that defines jvp, and the op carries the same backward
    (register_autograd below), so compiled code differentiates the op, and eager code keeps the
    Function's forward-mode AD and batching rules for torch.func.
    """
    if torch.compiler.is_compiling():
        return op(*args)
    if _functorch_active():
        check_nested_vmap()
    return function.apply(*args)


def register_backward_op_autograd(op_name, function, num_tensor_args):
    """register_autograd on a backward op, with the Function that wraps it (tensors, then NonTensorArgs)."""

    def setup_context(ctx, inputs, output):
        tensors, rest = inputs[:num_tensor_args], NonTensorArgs(tuple(inputs[num_tensor_args:]))
        ctx.num_non_tensor_args = len(rest.values)
        function.setup_context(ctx, (*tensors, rest), output)

    def backward(ctx, *grads):
        grad_tensors = function.backward(ctx, *grads)[:num_tensor_args]
        return (*grad_tensors, *([None] * ctx.num_non_tensor_args))

    torch.library.register_autograd(op_name, backward, setup_context=setup_context)


class LinearSigmoidFunction(torch.autograd.Function):
    """y = sigmoid(input @ weight.T + bias).

    Backward (csrc/linear_sigmoid.cpp), from the saved output y:
        dz = dy * y * (1 - y)      dW = dz.T @ x      dx = dz @ W      db = dz summed to bias's shape
    Forward-mode (jvp), with tangents x', W', b' of the inputs:
        y' = y * (1 - y) * (x' @ W.T + x @ W'.T + b')
    """

    generate_vmap_rule = True

    @classmethod
    def apply(cls, input, weight, bias=None):
        """Function.apply without its per-call inspect.signature binding of the arguments (they are
        complete and positional here), which costs more than the kernels at small sizes. Under functorch
        transforms, Function.apply itself; torch.compile traces forward/backward and skips this body."""
        if _functorch_active():
            return super().apply(input, weight, bias)
        # Function.apply's unwrap_dead_wrappers, inlined.
        return _function_base_apply.__get__(None, cls)(
            _unwrap_if_dead(input), _unwrap_if_dead(weight), None if bias is None else _unwrap_if_dead(bias)
        )

    @staticmethod
    def forward(input, weight, bias):
        if _may_skip_autograd():
            return _C.linear_sigmoid_forward_below_autograd(input, weight, bias)
        return _linear_sigmoid_forward(input, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias = inputs
        ctx.save_for_backward(input, weight, output)  # sigmoid' = y (1 - y): keep y, not z
        if _forward_ad_possible():  # jvp runs during this call or never: save for it only when it may
            ctx.save_for_forward(input, weight, output)
        ctx.bias_sizes = None if bias is None else list(bias.shape)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, output = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        need_bias = need_bias and ctx.bias_sizes is not None
        if not (need_input or need_weight or need_bias):
            return None, None, None
        mask = [need_input, need_weight, need_bias]
        if torch.is_grad_enabled() or _functorch_active():
            # create_graph / torch.func: the backward op's own Function, which has derivatives and tangents.
            grad_input, grad_weight, grad_bias = LinearSigmoidBackwardFunction.apply(
                grad_output, input, weight, output, NonTensorArgs((ctx.bias_sizes, mask))
            )
        elif _may_skip_autograd():
            grad_input, grad_weight, grad_bias = _C.linear_sigmoid_backward_below_autograd(
                grad_output, input, weight, output, ctx.bias_sizes, mask
            )
        else:
            grad_input, grad_weight, grad_bias = _linear_sigmoid_backward(
                grad_output, input, weight, output, ctx.bias_sizes, mask
            )
        return (
            grad_input if need_input else None,
            grad_weight if need_weight else None,
            grad_bias if need_bias else None,
        )

    @staticmethod
    def jvp(ctx, input_tangent, weight_tangent, bias_tangent):
        input, weight, output = ctx.saved_tensors
        z_tangent = torch.zeros_like(output)
        if input_tangent is not None:
            z_tangent = z_tangent + F.linear(input_tangent, weight)
        if weight_tangent is not None:
            z_tangent = z_tangent + F.linear(input, weight_tangent)
        if bias_tangent is not None:
            z_tangent = z_tangent + bias_tangent
        return output * (1 - output) * z_tangent


class LinearSigmoidBackwardFunction(torch.autograd.Function):
    """(dx, dW, db) = linear_sigmoid_backward(dy, x, W, y), differentiable in dy, x, W and y.

    With dz = dy * y * (1 - y), dx = dz @ W, dW = dz.T @ x, db = sum_to(dz, bias), and the incoming
    gradients ggx, ggW, ggb of (dx, dW, db):
        d/d dz  = ggx @ W.T + x @ ggW.T + expand(ggb)          (sum of the three uses of dz)
        d/d W   = dz.T @ ggx                                    (from dx)
        d/d x   = dz @ ggW                                      (from dW)
        d/d dy  = d/d dz * y * (1 - y)                          (summed to dy's shape)
        d/d y   = d/d dz * dy * (1 - 2 y)
    Forward-mode, with tangents dy', x', W', y':
        dz' = dy' * y * (1 - y) + dy * (1 - 2 y) * y'
        dx' = dz' @ W + dz @ W'      dW' = dz'.T @ x + dz.T @ x'      db' = sum_to(dz', bias)
    Outputs that output_mask leaves out are empty tensors, with no gradient and no tangent.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(grad_output, input, weight, output, non_tensor_args):
        bias_sizes, output_mask = non_tensor_args.values
        return _ops.linear_sigmoid_backward.default(grad_output, input, weight, output, bias_sizes, output_mask)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_output, input, weight, out, non_tensor_args = inputs
        ctx.save_for_backward(grad_output, input, weight, out)
        ctx.save_for_forward(grad_output, input, weight, out)
        ctx.bias_sizes, ctx.output_mask = non_tensor_args.values
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_grad_input, grad_grad_weight, grad_grad_bias):
        grad_output, input, weight, output = ctx.saved_tensors
        want_input, want_weight, want_bias = ctx.output_mask
        rows = input.shape[:-1].numel()  # explicit: reshape(-1, 0) is ambiguous when a feature count is 0
        rows_shape = (rows, weight.shape[0])
        dy = grad_output.expand(output.shape)
        dz = (dy * output * (1 - output)).reshape(rows_shape)
        grad_dz = torch.zeros_like(dz)
        grad_x = grad_w = None
        if want_input and grad_grad_input is not None:
            ggx = grad_grad_input.reshape(rows, weight.shape[1])
            grad_dz = grad_dz + ggx @ weight.t()
            grad_w = dz.t() @ ggx
        if want_weight and grad_grad_weight is not None:
            grad_dz = grad_dz + input.reshape(rows, weight.shape[1]) @ grad_grad_weight.t()
            grad_x = (dz @ grad_grad_weight).reshape(input.shape)
        if want_bias and ctx.bias_sizes is not None and grad_grad_bias is not None:
            grad_dz = grad_dz + grad_grad_bias.expand(output.shape).reshape(rows_shape)
        grad_dz = grad_dz.reshape(output.shape)
        grad_dy = (grad_dz * output * (1 - output)).sum_to_size(grad_output.shape)
        grad_y = grad_dz * dy * (1 - 2 * output)
        return grad_dy, grad_x, grad_w, grad_y, None

    @staticmethod
    def jvp(ctx, grad_output_tangent, input_tangent, weight_tangent, output_tangent, _):
        grad_output, input, weight, output = ctx.saved_tensors
        want_input, want_weight, want_bias = ctx.output_mask
        rows = input.shape[:-1].numel()  # explicit: reshape(-1, 0) is ambiguous when a feature count is 0
        rows_shape = (rows, weight.shape[0])
        dy = grad_output.expand(output.shape)
        dz = dy * output * (1 - output)
        dz_tangent = torch.zeros_like(dz)
        if grad_output_tangent is not None:
            dz_tangent = dz_tangent + grad_output_tangent.expand(output.shape) * output * (1 - output)
        if output_tangent is not None:
            dz_tangent = dz_tangent + dy * (1 - 2 * output) * output_tangent
        dz, dz_tangent_rows = dz.reshape(rows_shape), dz_tangent.reshape(rows_shape)
        nothing = input.new_empty((0,))
        grad_input_tangent = grad_weight_tangent = grad_bias_tangent = nothing
        if want_input:
            grad_input_tangent = dz_tangent_rows @ weight
            if weight_tangent is not None:
                grad_input_tangent = grad_input_tangent + dz @ weight_tangent
            grad_input_tangent = grad_input_tangent.reshape(input.shape)
        if want_weight:
            grad_weight_tangent = dz_tangent_rows.t() @ input.reshape(rows, weight.shape[1])
            if input_tangent is not None:
                grad_weight_tangent = grad_weight_tangent + dz.t() @ input_tangent.reshape(rows, weight.shape[1])
        if want_bias and ctx.bias_sizes is not None:
            grad_bias_tangent = dz_tangent.sum_to_size(ctx.bias_sizes)
        return grad_input_tangent, grad_weight_tangent, grad_bias_tangent


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
        return _call_kernel(
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
        if _forward_ad_possible():  # jvp runs during this call or never: save for it only when it may
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
        if torch.is_grad_enabled() or _functorch_active():
            # create_graph / torch.func: the backward op's own Function, which has derivatives and tangents.
            grad_input, grad_target = SoftmaxCrossEntropyBackwardFunction.apply(
                grad_loss, input, target, weight, max_logit, log_sum, normalizer, NonTensorArgs(options)
            )
        else:
            grad_input, grad_target = _call_kernel(
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


torch.library.register_autograd(
    "torch_manualbp::linear_sigmoid_forward",
    LinearSigmoidFunction.backward,
    setup_context=LinearSigmoidFunction.setup_context,
)
register_backward_op_autograd("torch_manualbp::linear_sigmoid_backward", LinearSigmoidBackwardFunction, 4)
torch.library.register_autograd(
    "torch_manualbp::softmax_cross_entropy_forward",
    SoftmaxCrossEntropyFunction.backward,
    setup_context=SoftmaxCrossEntropyFunction.setup_context,
)
register_backward_op_autograd(
    "torch_manualbp::softmax_cross_entropy_backward", SoftmaxCrossEntropyBackwardFunction, 7
)
