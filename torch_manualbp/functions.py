"""The autograd.Function of each layer: forward and backward call the C++ ops (torch.ops.torch_manualbp).

The same backward is registered on the forward op with torch.library.register_autograd, so that the op
called directly (torch.compile, opcheck, export) and the Function give one gradient. The backward ops
have derivatives too (double backward), written out below from the same formulas as the kernels.
"""
import torch

_ops = torch.ops.torch_manualbp


class LinearSigmoidFunction(torch.autograd.Function):
    """y = sigmoid(input @ weight.T + bias).

    Backward (csrc/linear_sigmoid.cpp), from the saved output y:
        dz = dy * y * (1 - y)      dW = dz.T @ x      dx = dz @ W      db = dz summed to bias's shape
    """

    @staticmethod
    def forward(input, weight, bias):
        return _ops.linear_sigmoid_forward.default(input, weight, bias)

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
        grad_input, grad_weight, grad_bias = _ops.linear_sigmoid_backward.default(
            grad_output, input, weight, output, ctx.bias_sizes, [need_input, need_weight, need_bias]
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
    rows = input.shape[:-1].numel()  # explicit: reshape(-1, 0) is ambiguous when a feature count is 0
    rows_shape = (rows, weight.shape[0])
    x2d = input.reshape(rows, weight.shape[1])
    dy = grad_output.expand(output.shape)
    dz = (dy * output * (1 - output)).reshape(rows_shape)
    grad_dz = torch.zeros_like(dz)
    grad_x = grad_w = None
    if want_input and grad_grad_input is not None:
        ggx = grad_grad_input.reshape(rows, weight.shape[1])
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


class SoftmaxCrossEntropyFunction(torch.autograd.Function):
    """F.cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing), fused.

    ``apply(input, target, weight, reduction, ignore_index, label_smoothing)`` (the order of the op
    softmax_cross_entropy_forward) returns ``(loss, logsumexp, normalizer)``; only ``loss`` is
    differentiable (with respect to ``input``, and to ``target`` when it holds class probabilities).

    Backward (csrc/softmax_cross_entropy.cpp), per position i, from the saved logsumexp:
        grad_input  = g_i (softmax(x_i) A_i - a_i)      grad_target = g_i (1 - eps) w (lse_i - x_i)
    with a_i the weighted, smoothed target distribution, A_i its sum and g_i = grad_loss / normalizer.
    """

    @staticmethod
    def forward(input, target, weight, reduction, ignore_index, label_smoothing):
        return _ops.softmax_cross_entropy_forward.default(
            input, target, weight, reduction, ignore_index, label_smoothing
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, reduction, ignore_index, label_smoothing = inputs
        _, logsumexp, normalizer = output
        ctx.mark_non_differentiable(logsumexp, normalizer)
        # References to the inputs and one value per position: nothing of the logits' size is created.
        ctx.save_for_backward(input, target, weight, logsumexp, normalizer)
        ctx.reduction = reduction
        ctx.ignore_index = ignore_index
        ctx.label_smoothing = label_smoothing

    @staticmethod
    def backward(ctx, grad_loss, grad_logsumexp, grad_normalizer):
        input, target, weight, logsumexp, normalizer = ctx.saved_tensors
        need_input, need_target, need_weight = ctx.needs_input_grad[:3]
        if need_weight:  # as torch's nll_loss: class weights are constants
            raise RuntimeError("softmax_cross_entropy: the derivative for 'weight' is not implemented")
        if not (need_input or need_target):
            return None, None, None, None, None, None
        grad_input, grad_target = _ops.softmax_cross_entropy_backward.default(
            grad_loss, input, target, weight, logsumexp, normalizer,
            ctx.reduction, ctx.ignore_index, ctx.label_smoothing, [need_input, need_target],
        )
        return (
            grad_input if need_input else None,
            grad_target if need_target else None,
            None, None, None, None,
        )


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
    if target.shape == input.shape:  # class probabilities (the C++ checks made sure they are floating)
        a = w * ((1 - eps) * target + eps / classes)
    else:
        index = target.long().unsqueeze(class_dim)
        kept = index != ignore_index
        index = torch.where(kept, index, 0)
        one_hot = torch.zeros_like(input).scatter(class_dim, index, 1.0)
        a = w * ((1 - eps) * one_hot + eps / classes) * kept
    return a, a.sum(class_dim, keepdim=True), w


def _softmax_cross_entropy_backward_setup_context(ctx, inputs, output):
    grad_loss, input, target, weight, logsumexp, normalizer, reduction, ignore_index, label_smoothing, output_mask = inputs
    ctx.save_for_backward(grad_loss, input, target, weight, normalizer)
    ctx.reduction = reduction
    ctx.ignore_index = ignore_index
    ctx.label_smoothing = label_smoothing
    ctx.output_mask = output_mask


def _softmax_cross_entropy_backward_backward(ctx, grad_grad_input, grad_grad_target):
    """Derivative of (grad_input, grad_target) = backward(grad_loss, x, p), for double backward.

    With y = softmax(x) (lse is a function of x: d lse / d x = y), g = grad_loss / normalizer per
    position, GI = grad_grad_input, GT = grad_grad_target, <.,.> sums over the class dim:
        grad_input  = g (y A - a)                  grad_target = g (1 - eps) w (lse - x)
        d/d grad_loss = (<GI, y A - a> + <GT, (1 - eps) w (lse - x)>) / normalizer   (summed to its shape)
        d/d x         = g A y (GI - <GI, y>)  +  g (1 - eps) (y <GT, w> - GT w)
        d/d p         = g (1 - eps) w (<GI, y> - GI)           (probability targets: A, a depend on p)
    Built from differentiable torch ops, so higher derivatives exist as well.
    """
    grad_loss, input, target, weight, normalizer = ctx.saved_tensors
    class_dim = 0 if input.dim() == 1 else 1
    eps = ctx.label_smoothing
    probability = target.shape == input.shape
    a, A, class_weight = _softmax_cross_entropy_coefficients(input, target, weight, ctx.ignore_index, eps)
    log_y = torch.log_softmax(input, class_dim)
    y = log_y.exp()
    g = grad_loss / normalizer
    if ctx.reduction == "none":
        g = g.unsqueeze(class_dim)
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
    return grad_grad_loss, grad_x, grad_p, None, None, None, None, None, None, None


torch.library.register_autograd(
    "torch_manualbp::softmax_cross_entropy_forward",
    SoftmaxCrossEntropyFunction.backward,
    setup_context=SoftmaxCrossEntropyFunction.setup_context,
)
torch.library.register_autograd(
    "torch_manualbp::softmax_cross_entropy_backward",
    _softmax_cross_entropy_backward_backward,
    setup_context=_softmax_cross_entropy_backward_setup_context,
)
