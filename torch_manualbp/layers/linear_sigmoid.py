"""LinearSigmoid, everything Python about it: y = sigmoid(x @ W.T + b) with x (*, in), W (out, in) and b
broadcasting to the output (*, out).

    forward        y = sigmoid(z),  z = x @ W.T + b                               (csrc/linear_sigmoid.cpp)
    backward       dz = dy * y * (1 - y)   dW = dz.T @ x   dx = dz @ W   db = dz summed to b's shape
    forward AD     y' = y * (1 - y) * (x' @ W.T + x @ W'.T + b')
    double backward and the backward's tangents: LinearSigmoidBackwardFunction below

The ops torch_manualbp::linear_sigmoid_forward / linear_sigmoid_backward (csrc/ops.cpp) get here: the
Functions' backward as their autograd (register_autograd, so that the op called directly under
torch.compile, opcheck or export and the Function give one gradient), fake kernels that check shapes as
the C++ does (same messages), batching rules for torch.vmap, and autocast kernels (F.linear's rule: the
autocast dtype).
"""
import torch
import torch.nn.functional as F

from .. import _C
from .._compat import register_vmap
from ._common import (
    LOWER_PRECISION,
    NonTensorArgs,
    batch_first,
    forward_ad_possible,
    functorch_active,
    may_skip_autograd,
    per_sample,
    register_autocast,
    register_backward_op_autograd,
    right_aligned,
)

_ops = torch.ops.torch_manualbp
_linear_sigmoid_forward = _ops.linear_sigmoid_forward.default
_linear_sigmoid_backward = _ops.linear_sigmoid_backward.default
_unwrap_if_dead = torch._C._functorch.unwrap_if_dead
_function_base_apply = torch._C._FunctionBase.__dict__["apply"]  # the C++ apply behind Function.apply


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
        if functorch_active():
            return super().apply(input, weight, bias)
        # Function.apply's unwrap_dead_wrappers, inlined.
        return _function_base_apply.__get__(None, cls)(
            _unwrap_if_dead(input), _unwrap_if_dead(weight), None if bias is None else _unwrap_if_dead(bias)
        )

    @staticmethod
    def forward(input, weight, bias):
        if may_skip_autograd():
            return _C.linear_sigmoid_forward_below_autograd(input, weight, bias)
        return _linear_sigmoid_forward(input, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias = inputs
        ctx.save_for_backward(input, weight, output)  # sigmoid' = y (1 - y): keep y, not z
        if forward_ad_possible():  # jvp runs during this call or never: save for it only when it may
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
        if torch.is_grad_enabled() or functorch_active():
            # create_graph / torch.func: the backward op's own Function, which has derivatives and tangents.
            grad_input, grad_weight, grad_bias = LinearSigmoidBackwardFunction.apply(
                grad_output, input, weight, output, NonTensorArgs((ctx.bias_sizes, mask))
            )
        elif may_skip_autograd():
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


# ---- autograd of the ops: the Functions' backward ----------------------------------------------------

torch.library.register_autograd(
    "torch_manualbp::linear_sigmoid_forward",
    LinearSigmoidFunction.backward,
    setup_context=LinearSigmoidFunction.setup_context,
)
register_backward_op_autograd("torch_manualbp::linear_sigmoid_backward", LinearSigmoidBackwardFunction, 4)


# ---- fake kernels (torch.compile, export): shapes and dtypes, checked as csrc/*_args.cpp ---------------


def _linear_sigmoid_output_shape(op, input, weight):
    torch._check(input.dim() >= 1, lambda: f"{op}: expected input of shape (*, in_features) with at least 1 dimension, but got input of shape {list(input.shape)}")
    torch._check(weight.dim() == 2, lambda: f"{op}: expected weight of shape (out_features, in_features) with 2 dimensions, but got weight of shape {list(weight.shape)}")
    torch._check(
        input.shape[-1] == weight.shape[1],
        lambda: f"{op}: expected input.size(-1) to equal weight.size(1) (in_features = {weight.shape[1]}), but got input of shape {list(input.shape)} and weight of shape {list(weight.shape)}",
    )
    return (*input.shape[:-1], weight.shape[0])


@torch.library.register_fake("torch_manualbp::linear_sigmoid_forward")
def _linear_sigmoid_forward_fake(input, weight, bias):
    return input.new_empty(_linear_sigmoid_output_shape("linear_sigmoid", input, weight))


@torch.library.register_fake("torch_manualbp::linear_sigmoid_backward")
def _linear_sigmoid_backward_fake(grad_output, input, weight, output, bias_sizes, output_mask):
    _linear_sigmoid_output_shape("linear_sigmoid_backward", input, weight)
    return (
        input.new_empty(input.shape) if output_mask[0] else input.new_empty((0,)),
        weight.new_empty(weight.shape) if output_mask[1] else input.new_empty((0,)),
        input.new_empty(bias_sizes) if output_mask[2] and bias_sizes is not None else input.new_empty((0,)),
    )


# ---- batching rules (torch.vmap): the vmapped dim folds into the leading dims, except for a batched ---
# weight or a per-sample weight gradient (the op sums over the leading dims): one op call per sample.


@register_vmap("torch_manualbp::linear_sigmoid_forward")
def _linear_sigmoid_forward_vmap(info, in_dims, input, weight, bias):
    input_bdim, weight_bdim, bias_bdim = in_dims
    if weight_bdim is not None:
        return per_sample(_ops.linear_sigmoid_forward.default, info, in_dims, (input, weight, bias))
    input = batch_first(input, input_bdim, info.batch_size)
    if bias is not None:
        bias = right_aligned(bias, bias_bdim, input.dim())
    return _ops.linear_sigmoid_forward.default(input, weight, bias), 0


@register_vmap("torch_manualbp::linear_sigmoid_backward")
def _linear_sigmoid_backward_vmap(info, in_dims, grad_output, input, weight, output, bias_sizes, output_mask):
    grad_output_bdim, input_bdim, weight_bdim, output_bdim = in_dims[:4]
    want_input, want_weight, want_bias = output_mask
    if weight_bdim is not None or want_weight:
        return per_sample(
            _ops.linear_sigmoid_backward.default,
            info,
            in_dims,
            (grad_output, input, weight, output, bias_sizes, output_mask),
        )
    batch_size = info.batch_size
    input = batch_first(input, input_bdim, batch_size)
    output = batch_first(output, output_bdim, batch_size)
    grad_output = right_aligned(grad_output, grad_output_bdim, output.dim())
    batched_bias_sizes = None
    if bias_sizes is not None:
        # A per-sample bias gradient: the vmapped dim is a bias dim, so the op does not sum over it.
        batched_bias_sizes = [batch_size, *([1] * (output.dim() - 1 - len(bias_sizes))), *bias_sizes]
    grad_input, grad_weight, grad_bias = _ops.linear_sigmoid_backward.default(
        grad_output, input, weight, output, batched_bias_sizes, output_mask
    )
    if want_bias and bias_sizes is not None:
        grad_bias = grad_bias.reshape(batch_size, *bias_sizes)
    return (grad_input, grad_weight, grad_bias), (
        0 if want_input else None,
        None,
        0 if want_bias and bias_sizes is not None else None,
    )


# ---- autocast: F.linear's rule, the autocast dtype (float64 never cast) -------------------------------

register_autocast("linear_sigmoid_forward", LOWER_PRECISION)
register_autocast("linear_sigmoid_backward", LOWER_PRECISION)
