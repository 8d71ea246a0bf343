"""Argument lists of every op, built the same way for every device: the opcheck tests (tests/test_opcheck.py)
and the CUDA tests (tests/test_cuda.py) call the ops through these builders, so that a change of an op's
schema breaks the CPU run of both files at once, whether or not a GPU is there to run the CUDA variants.

DEVICES parametrizes a test over the CPU (always run) and CUDA (skipped without a GPU).
"""
import pytest
import torch

import torch_manualbp  # noqa: F401  (registers the ops)

ops = torch.ops.torch_manualbp

HAS_GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_gpu)]


def make(shape, dtype, requires_grad, contiguous=True, device="cpu"):
    """randn of this shape; not contiguous: a view with stride 2 along the last dim."""
    tensor = torch.randn(shape, dtype=dtype, device=device)
    if not contiguous and tensor.dim() > 0:
        tensor = torch.randn(*shape[:-1], shape[-1] * 2, dtype=dtype, device=device)[..., ::2]
        assert tensor.numel() == 0 or shape[-1] == 1 or not tensor.is_contiguous()
    return tensor.requires_grad_(requires_grad)


# ---- LinearSigmoid: (input shape, out_features, bias shape or None) --------------------------------------
def linear_sigmoid_forward_args(case, dtype, requires_grad, contiguous, device="cpu"):
    """(input, weight, bias) of linear_sigmoid_forward."""
    input_shape, out_features, bias_shape = case
    input = make(input_shape, dtype, requires_grad, contiguous, device)
    weight = make((out_features, input_shape[-1]), dtype, requires_grad, contiguous, device)
    bias = None if bias_shape is None else make(bias_shape, dtype, requires_grad, device=device)
    return input, weight, bias


def linear_sigmoid_backward_args(case, dtype, requires_grad, contiguous, output_mask, device="cpu"):
    """(grad_output, input, weight, output, bias_sizes, output_mask) of linear_sigmoid_backward, the
    output from the forward op."""
    input, weight, bias = linear_sigmoid_forward_args(case, dtype, requires_grad, contiguous, device)
    with torch.no_grad():
        output = ops.linear_sigmoid_forward(input, weight, bias)
    grad_output = make(output.shape, dtype, requires_grad, contiguous, device)
    bias_sizes = None if bias is None else list(bias.shape)
    return (grad_output, input, weight, output.requires_grad_(requires_grad), bias_sizes, output_mask)


# ---- SoftmaxCrossEntropy: (input shape, target kind, reduction, weight, ignore_index, label_smoothing[,
# lse_square_scale, softcap]) (the last two optional: 0.0 and None) ----------------------------------------
def softmax_cross_entropy_forward_args(case, dtype, requires_grad, contiguous, device="cpu"):
    """(input, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale, softcap) of
    softmax_cross_entropy_forward. Not contiguous: strided along the class dim (the dim the kernels run along)."""
    shape, kind, reduction, has_weight, ignore_index, label_smoothing, *options = case
    lse_square_scale, softcap = options if options else (0.0, None)
    class_dim = 0 if len(shape) == 1 else 1
    classes = shape[class_dim]
    positions = [size for dim, size in enumerate(shape) if dim != class_dim]
    input = make((*positions, classes), dtype, False, contiguous, device).movedim(-1, class_dim)
    input = input.detach().requires_grad_(requires_grad)
    if kind == "probability":
        target = torch.rand(input.shape, dtype=dtype, device=device).softmax(class_dim).requires_grad_(requires_grad)
    else:
        index_dtype = torch.uint8 if kind == "uint8" else torch.int64
        target = torch.randint(0, classes, positions, dtype=index_dtype, device=device)
        if target.numel() > 0 and ignore_index >= 0:
            target.view(-1)[0] = ignore_index
    weight = torch.rand(classes, dtype=dtype, device=device) + 0.5 if has_weight else None
    return input, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale, softcap


def softmax_cross_entropy_backward_args(case, dtype, requires_grad, contiguous, output_mask, device="cpu"):
    """(grad_loss, input, target, weight, max_logit, log_sum, normalizer, reduction, ignore_index,
    label_smoothing, output_mask, lse_square_scale, softcap) of softmax_cross_entropy_backward, the statistics
    from the forward op."""
    input, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale, softcap = (
        softmax_cross_entropy_forward_args(case, dtype, requires_grad, contiguous, device)
    )
    with torch.no_grad():
        loss, max_logit, log_sum, normalizer = ops.softmax_cross_entropy_forward(
            input, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale, softcap
        )
    grad_loss = torch.randn(loss.shape, dtype=dtype, device=device, requires_grad=requires_grad)
    return (
        grad_loss, input, target, weight, max_logit, log_sum, normalizer, reduction, ignore_index, label_smoothing,
        output_mask, lse_square_scale, softcap,
    )


# ---- LinearCrossEntropy: (token shape, in_features, classes, target kind, reduction, bias, class weight, options)
def linear_cross_entropy_forward_args(case, dtype, requires_grad, contiguous, grad_mask=(False, False, False),
                                      device="cpu"):
    """(input, linear_weight, linear_bias, target, weight, reduction, ignore_index, label_smoothing,
    lse_square_scale, softcap, grad_mask, chunk_budget) of linear_cross_entropy_forward; index targets have
    their second token ignored. options: label_smoothing, lse_square_scale, softcap, chunk_budget."""
    token_shape, in_features, classes, kind, reduction, has_bias, has_weight, options = case
    input = make((*token_shape, in_features), dtype, requires_grad, contiguous, device)
    linear_weight = make((classes, in_features), dtype, requires_grad, contiguous, device)
    linear_bias = make((classes,), dtype, requires_grad, device=device) if has_bias else None
    if kind == "probability":
        target = torch.rand(*token_shape, classes, dtype=dtype, device=device).softmax(-1).requires_grad_(requires_grad)
    else:
        target = torch.randint(0, classes, token_shape, dtype=torch.uint8 if kind == "uint8" else torch.int64,
                               device=device)
        if target.numel() > 1:
            target.view(-1)[1] = 255 if kind == "uint8" else -100
    weight = torch.rand(classes, dtype=dtype, device=device) + 0.5 if has_weight else None
    ignore_index = 255 if kind == "uint8" else -100
    return (
        input, linear_weight, linear_bias, target, weight, reduction, ignore_index,
        options.get("label_smoothing", 0.0), options.get("lse_square_scale", 0.0), options.get("softcap"),
        list(grad_mask), options.get("chunk_budget", 1 << 20),
    )


def linear_cross_entropy_backward_args(case, dtype, requires_grad, contiguous, output_mask, device="cpu"):
    """(grad_loss, input, linear_weight, linear_bias, target, weight, reduction, ignore_index, label_smoothing,
    lse_square_scale, softcap, output_mask, chunk_budget) of linear_cross_entropy_backward."""
    (input, linear_weight, linear_bias, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale,
     softcap, _, chunk_budget) = linear_cross_entropy_forward_args(case, dtype, requires_grad, contiguous, device=device)
    loss_shape = () if reduction != "none" else input.shape[:-1]
    grad_loss = torch.randn(loss_shape, dtype=dtype, device=device, requires_grad=requires_grad)
    return (
        grad_loss, input, linear_weight, linear_bias, target, weight, reduction, ignore_index, label_smoothing,
        lse_square_scale, softcap, output_mask, chunk_budget,
    )
