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

_ops = torch.ops.torch_manualbp


@dataclasses.dataclass(frozen=True)
class NonTensorArgs:
    """The trailing non-tensor arguments of a backward op (sizes, masks, options), as one opaque value.

    torch.func flattens the arguments of an autograd.Function into pytree leaves, and its jvp under vmap
    (jacfwd of a backward: torch.func.hessian) then pairs the tangents with the wrong in_dims when an
    argument is a list (torch/_functorch/autograd_function.py, get_tangents_in_dims). One leaf avoids it.
    """

    values: tuple


def apply(function, op, *args):
    """Runs a layer: function.apply in eager mode, the op itself under torch.compile and torch.export.

    Dynamo graph-breaks on an autograd.Function that defines jvp, and the op carries the same backward
    (register_autograd below), so compiled code differentiates the op, and eager code keeps the
    Function's forward-mode AD and batching rules for torch.func.
    """
    if torch.compiler.is_compiling():
        return op(*args)
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

    @staticmethod
    def forward(input, weight, bias):
        return _ops.linear_sigmoid_forward.default(input, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias = inputs
        ctx.save_for_backward(input, weight, output)  # sigmoid' = y (1 - y): keep y, not z
        ctx.save_for_forward(input, weight, output)
        ctx.bias_sizes = None if bias is None else list(bias.shape)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, output = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        need_bias = need_bias and ctx.bias_sizes is not None
        if not (need_input or need_weight or need_bias):
            return None, None, None
        grad_input, grad_weight, grad_bias = LinearSigmoidBackwardFunction.apply(
            grad_output, input, weight, output, NonTensorArgs((ctx.bias_sizes, [need_input, need_weight, need_bias]))
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
        rows_shape = (-1, weight.shape[0])
        dy = grad_output.expand(output.shape)
        dz = (dy * output * (1 - output)).reshape(rows_shape)
        grad_dz = torch.zeros_like(dz)
        grad_x = grad_w = None
        if want_input and grad_grad_input is not None:
            ggx = grad_grad_input.reshape(-1, weight.shape[1])
            grad_dz = grad_dz + ggx @ weight.t()
            grad_w = dz.t() @ ggx
        if want_weight and grad_grad_weight is not None:
            grad_dz = grad_dz + input.reshape(-1, weight.shape[1]) @ grad_grad_weight.t()
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
        rows_shape = (-1, weight.shape[0])
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
            grad_weight_tangent = dz_tangent_rows.t() @ input.reshape(-1, weight.shape[1])
            if input_tangent is not None:
                grad_weight_tangent = grad_weight_tangent + dz.t() @ input_tangent.reshape(-1, weight.shape[1])
        if want_bias and ctx.bias_sizes is not None:
            grad_bias_tangent = dz_tangent.sum_to_size(ctx.bias_sizes)
        return grad_input_tangent, grad_weight_tangent, grad_bias_tangent


torch.library.register_autograd(
    "torch_manualbp::linear_sigmoid_forward",
    LinearSigmoidFunction.backward,
    setup_context=LinearSigmoidFunction.setup_context,
)
register_backward_op_autograd("torch_manualbp::linear_sigmoid_backward", LinearSigmoidBackwardFunction, 4)
