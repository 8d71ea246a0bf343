"""The autograd.Function of each layer: forward and backward call the C++ ops (torch.ops.torch_manualbp).

The same backward is registered on the forward op with torch.library.register_autograd, so that the op
called directly (torch.compile, opcheck, export) and the Function give one gradient. The backward ops
have derivatives too (double backward), written out below from the same formulas as the kernels.
"""
import torch

_ops = torch.ops.torch_manualbp
_linear_sigmoid_forward = _ops.linear_sigmoid_forward.default
_linear_sigmoid_backward = _ops.linear_sigmoid_backward.default


def _call_kernel(op, *args):
    """op(*args), skipping the Python autograd wrapper that register_autograd (below) puts on the op
    where that wrapper would only redispatch: grad mode off (inside Function.forward, and in a backward
    without create_graph), in eager mode, outside functorch transforms. The wrapper costs more than the
    kernels of a small layer; elsewhere (double backward, torch.compile, torch.func) it runs as usual."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


class LinearSigmoidFunction(torch.autograd.Function):
    """y = sigmoid(input @ weight.T + bias).

    Backward (csrc/linear_sigmoid.cpp), from the saved output y:
        dz = dy * y * (1 - y)      dW = dz.T @ x      dx = dz @ W      db = dz summed to bias's shape
    """

    @classmethod
    def apply(cls, input, weight, bias=None):
        """Function.apply without its per-call inspect.signature binding of the arguments (they are
        complete and positional here), which costs more than the kernels at small sizes. Under functorch
        transforms, Function.apply itself; torch.compile traces forward/backward and skips this body."""
        if torch._C._are_functorch_transforms_active():
            return super().apply(input, weight, bias)
        args = torch._functorch.utils.unwrap_dead_wrappers((input, weight, bias))
        return super(torch.autograd.Function, cls).apply(*args)

    @staticmethod
    def forward(input, weight, bias):
        return _call_kernel(_linear_sigmoid_forward, input, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias = inputs
        ctx.save_for_backward(input, weight, output)  # sigmoid' = y (1 - y): keep y, not z
        ctx.bias_sizes = None if bias is None else list(bias.shape)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, output = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        need_bias = need_bias and ctx.bias_sizes is not None
        if not (need_input or need_weight or need_bias):
            return None, None, None
        grad_input, grad_weight, grad_bias = _call_kernel(
            _linear_sigmoid_backward, grad_output, input, weight, output, ctx.bias_sizes,
            [need_input, need_weight, need_bias],
        )
        return (
            grad_input if need_input else None,
            grad_weight if need_weight else None,
            grad_bias if need_bias else None,
        )


def _linear_sigmoid_backward_setup_context(ctx, inputs, output):
    grad_output, input, weight, out, bias_sizes, output_mask = inputs
    ctx.save_for_backward(grad_output, input, weight, out)
    ctx.bias_sizes = bias_sizes
    ctx.output_mask = output_mask


def _linear_sigmoid_backward_backward(ctx, grad_grad_input, grad_grad_weight, grad_grad_bias):
    """Derivative of (dx, dW, db) = backward(dy, x, W, y), for double backward.

    With dz = dy * y * (1 - y), dx = dz @ W, dW = dz.T @ x, db = sum_to(dz, bias):
        d/d dz  = ggx @ W.T + x @ ggW.T + expand(ggb)          (sum of the three uses of dz)
        d/d W   = dz.T @ ggx                                    (from dx)
        d/d x   = dz @ ggW                                      (from dW)
        d/d dy  = d/d dz * y * (1 - y)                          (summed to dy's shape)
        d/d y   = d/d dz * dy * (1 - 2 y)
    Built from differentiable torch ops, so higher derivatives exist as well.
    """
    grad_output, input, weight, output = ctx.saved_tensors
    want_input, want_weight, want_bias = ctx.output_mask
    rows_shape = (-1, weight.shape[0])
    x2d = input.reshape(-1, weight.shape[1])
    dy = grad_output.expand(output.shape)
    dz = (dy * output * (1 - output)).reshape(rows_shape)
    grad_dz = torch.zeros_like(dz)
    grad_x = grad_w = None
    if want_input and grad_grad_input is not None:
        ggx = grad_grad_input.reshape(-1, weight.shape[1])
        grad_dz = grad_dz + ggx @ weight.t()
        grad_w = dz.t() @ ggx
    if want_weight and grad_grad_weight is not None:
        grad_dz = grad_dz + x2d @ grad_grad_weight.t()
        grad_x = (dz @ grad_grad_weight).reshape(input.shape)
    if want_bias and ctx.bias_sizes is not None and grad_grad_bias is not None:
        grad_dz = grad_dz + grad_grad_bias.expand(output.shape).reshape(rows_shape)
    grad_dz = grad_dz.reshape(output.shape)
    grad_dy = (grad_dz * output * (1 - output)).sum_to_size(grad_output.shape)
    grad_y = grad_dz * dy * (1 - 2 * output)
    return grad_dy, grad_x, grad_w, grad_y, None, None


torch.library.register_autograd(
    "torch_manualbp::linear_sigmoid_forward",
    LinearSigmoidFunction.backward,
    setup_context=LinearSigmoidFunction.setup_context,
)
torch.library.register_autograd(
    "torch_manualbp::linear_sigmoid_backward",
    _linear_sigmoid_backward_backward,
    setup_context=_linear_sigmoid_backward_setup_context,
)
