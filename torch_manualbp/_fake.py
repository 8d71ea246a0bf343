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
