"""Fake (meta) kernels of every op, for torch.compile and torch.export: shapes and dtypes only.

They check shapes as the C++ kernels do (same messages), so that compiled code fails the same way.
"""
import torch


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
