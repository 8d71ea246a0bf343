"""Batching rules (torch.vmap, and so torch.func.jacrev / jacfwd / per-sample gradients) of every op.

A rule receives the arguments with the vmapped dim at in_dims[i] (None: not batched) and returns the
batched result and where its vmapped dim is. Each rule first tries to fold the vmapped dim into the
leading dims that the op already handles (one kernel call for the whole batch); where the batch does not
fold (a batched weight: one GEMM per sample; per-sample weight gradients: summed over the leading dims
by the op), it runs the op once per sample and stacks the results.
"""
import torch

from ._compat import register_vmap

_ops = torch.ops.torch_manualbp


def _batch_first(tensor, bdim, batch_size):
    """The tensor with its vmapped dim in front; an unbatched one expanded (a view, no copy)."""
    if bdim is None:
        return tensor.expand(batch_size, *tensor.shape)
    return tensor.movedim(bdim, 0)


def _right_aligned(tensor, bdim, rank):
    """A batched tensor that broadcasts against a (B, ...) tensor of `rank` dims: (B, 1, ..., 1, *shape).

    Broadcasting aligns shapes from the right, so a per-sample shape that broadcasts to the per-sample
    output keeps doing so once the ones are inserted after the vmapped dim. Unbatched: left as it is.
    """
    if bdim is None:
        return tensor
    tensor = tensor.movedim(bdim, 0)
    return tensor.reshape(tensor.shape[0], *([1] * (rank - tensor.dim())), *tensor.shape[1:])


def _per_sample(op, info, in_dims, args):
    """The fallback: op on each sample, results stacked along dim 0."""
    results = []
    for index in range(info.batch_size):
        sample = [
            arg.select(bdim, index) if isinstance(arg, torch.Tensor) and bdim is not None else arg
            for arg, bdim in zip(args, in_dims)
        ]
        results.append(op(*sample))
    if isinstance(results[0], tuple):
        stacked = tuple(torch.stack(parts) for parts in zip(*results))
        return stacked, (0,) * len(stacked)
    return torch.stack(results), 0


@register_vmap("torch_manualbp::linear_sigmoid_forward")
def _linear_sigmoid_forward_vmap(info, in_dims, input, weight, bias):
    input_bdim, weight_bdim, bias_bdim = in_dims
    if weight_bdim is not None:
        return _per_sample(_ops.linear_sigmoid_forward.default, info, in_dims, (input, weight, bias))
    input = _batch_first(input, input_bdim, info.batch_size)
    if bias is not None:
        bias = _right_aligned(bias, bias_bdim, input.dim())
    return _ops.linear_sigmoid_forward.default(input, weight, bias), 0


@register_vmap("torch_manualbp::linear_sigmoid_backward")
def _linear_sigmoid_backward_vmap(info, in_dims, grad_output, input, weight, output, bias_sizes, output_mask):
    grad_output_bdim, input_bdim, weight_bdim, output_bdim = in_dims[:4]
    want_input, want_weight, want_bias = output_mask
    if weight_bdim is not None or want_weight:
        return _per_sample(
            _ops.linear_sigmoid_backward.default,
            info,
            in_dims,
            (grad_output, input, weight, output, bias_sizes, output_mask),
        )
    batch_size = info.batch_size
    input = _batch_first(input, input_bdim, batch_size)
    output = _batch_first(output, output_bdim, batch_size)
    grad_output = _right_aligned(grad_output, grad_output_bdim, output.dim())
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


def _fold_into_positions(tensor, bdim, batch_size, input_has_batch_dim):
    """(B, N, ...) -> (B*N, ...) when each sample's input is (N, C, ...); a sample's (C,) input makes
    the B samples an (N = B, C) batch as they are."""
    tensor = _batch_first(tensor, bdim, batch_size)
    return tensor.flatten(0, 1) if input_has_batch_dim else tensor


def _unfold_positions(tensor, batch_size, input_has_batch_dim):
    return tensor.unflatten(0, (batch_size, -1)) if input_has_batch_dim else tensor


@register_vmap("torch_manualbp::softmax_cross_entropy_forward")
def _softmax_cross_entropy_forward_vmap(info, in_dims, input, target, weight, reduction, ignore_index, label_smoothing):
    """reduction='none' folds the samples into the positions (the normalizer is 1 for all); 'mean' and
    'sum' reduce over each sample, with each sample's normalizer, and run per sample."""
    input_bdim, target_bdim, weight_bdim = in_dims[:3]
    args = (input, target, weight, reduction, ignore_index, label_smoothing)
    if reduction != "none" or weight_bdim is not None:
        return _per_sample(_ops.softmax_cross_entropy_forward.default, info, in_dims, args)
    batch_size = info.batch_size
    has_batch_dim = input.dim() - (input_bdim is not None) >= 2
    loss, max_logit, log_sum, normalizer = _ops.softmax_cross_entropy_forward.default(
        _fold_into_positions(input, input_bdim, batch_size, has_batch_dim),
        _fold_into_positions(target, target_bdim, batch_size, has_batch_dim),
        weight,
        reduction,
        ignore_index,
        label_smoothing,
    )
    return (
        _unfold_positions(loss, batch_size, has_batch_dim),
        _unfold_positions(max_logit, batch_size, has_batch_dim),
        _unfold_positions(log_sum, batch_size, has_batch_dim),
        normalizer,
    ), (0, 0, 0, None)


@register_vmap("torch_manualbp::softmax_cross_entropy_backward")
def _softmax_cross_entropy_backward_vmap(
    info, in_dims, grad_loss, input, target, weight, max_logit, log_sum, normalizer, reduction, ignore_index,
    label_smoothing, output_mask,
):
    grad_loss_bdim, input_bdim, target_bdim, weight_bdim, max_logit_bdim, log_sum_bdim, normalizer_bdim = in_dims[:7]
    args = (
        grad_loss, input, target, weight, max_logit, log_sum, normalizer, reduction, ignore_index, label_smoothing,
        output_mask,
    )
    if reduction != "none" or weight_bdim is not None or normalizer_bdim is not None:
        return _per_sample(_ops.softmax_cross_entropy_backward.default, info, in_dims, args)
    batch_size = info.batch_size
    has_batch_dim = input.dim() - (input_bdim is not None) >= 2
    input = _fold_into_positions(input, input_bdim, batch_size, has_batch_dim)
    target = _fold_into_positions(target, target_bdim, batch_size, has_batch_dim)
    grad_input, grad_target = _ops.softmax_cross_entropy_backward.default(
        _fold_into_positions(grad_loss, grad_loss_bdim, batch_size, has_batch_dim),
        input,
        target,
        weight,
        _fold_into_positions(max_logit, max_logit_bdim, batch_size, has_batch_dim),
        _fold_into_positions(log_sum, log_sum_bdim, batch_size, has_batch_dim),
        normalizer,
        reduction,
        ignore_index,
        label_smoothing,
        output_mask,
    )
    want_input = output_mask[0]
    want_target = output_mask[1] and target.shape == input.shape
    return (
        _unfold_positions(grad_input, batch_size, has_batch_dim) if want_input else grad_input,
        _unfold_positions(grad_target, batch_size, has_batch_dim) if want_target else grad_target,
    ), (0 if want_input else None, 0 if want_target else None)
