"""What the layers share; each layer module imports it, it imports no layer.

  eager path     may_skip_autograd, call_kernel, forward_ad_possible, functorch_active, apply_layer
  backward ops   NonTensorArgs, register_backward_op_autograd
  autocast       LOWER_PRECISION, FLOAT32, cast_for_autocast, register_autocast
  checks         check_tensor, check_reduction, check_int, check_float, check_loss_options (fake kernels)
  batching       batch_first, right_aligned, per_sample (helpers of the register_vmap rules)
"""
import dataclasses
import math

import torch

from .._compat import check_nested_vmap, is_autocast_available

functorch_active = torch._C._are_functorch_transforms_active
_is_compiling = torch.compiler.is_compiling


# ---- the eager path ------------------------------------------------------------------------------------


def may_skip_autograd():
    """Whether an op may be called below autograd: grad mode off (inside Function.forward, and in a
    backward without create_graph), in eager mode, outside functorch transforms. There the Python
    autograd wrapper that register_autograd puts on each op would only redispatch, and it costs more
    than the kernels of a small layer; elsewhere (double backward, torch.compile, torch.func) the op
    runs as usual."""
    return not (torch.is_grad_enabled() or _is_compiling() or functorch_active())


def call_kernel(op, *args):
    """op(*args), below autograd where may_skip_autograd() allows."""
    if not may_skip_autograd():
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def forward_ad_possible():
    """Whether a jvp may be asked of a Function being applied now: a forward-AD dual level is open
    (torch.autograd.forward_ad) or a functorch transform (torch.func.jvp, jacfwd, ...) is active."""
    return torch.autograd.forward_ad._current_level >= 0 or functorch_active()


def apply_layer(function, op, *args):
    """Runs a layer: function.apply in eager mode, the op itself under torch.compile and torch.export.

    Dynamo graph-breaks on an autograd.Function that defines jvp, and the op carries the same backward
    (register_autograd in the layer's module), so compiled code differentiates the op, and eager code
    keeps the Function's forward-mode AD and batching rules for torch.func.
    """
    if torch.compiler.is_compiling():
        return op(*args)
    if functorch_active():
        check_nested_vmap()
    return function.apply(*args)


# ---- backward ops --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NonTensorArgs:
    """The trailing non-tensor arguments of a backward op (sizes, masks, options), as one opaque value.

    torch.func flattens the arguments of an autograd.Function into pytree leaves, and its jvp under vmap
    (jacfwd of a backward: torch.func.hessian) then pairs the tangents with the wrong in_dims when an
    argument is a list (torch/_functorch/autograd_function.py, get_tangents_in_dims). One leaf avoids it.
    """

    values: tuple


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


# ---- autocast ------------------------------------------------------------------------------------------
# A layer follows the precision rule of its native counterpart, with the autocast dtype read at call
# time, as native autocast does: LOWER_PRECISION (autocast's list of F.linear: floating tensors other
# than float64 go to the autocast dtype) or FLOAT32 (that of F.cross_entropy: they go to float32).
# The functional API casts before the layer's Function (autograd records the casts, so gradients of
# float32 parameters come back in float32, and the Function saves the tensors its op really ran on);
# the ops called directly get the same casts from their AutocastCPU / AutocastCUDA kernels
# (register_autocast), which then run the op with autocast off, as native ops do.

LOWER_PRECISION = "lower_precision"
FLOAT32 = "float32"
_AUTOCAST_DISPATCH_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA"}
_autocast_library = torch.library.Library("torch_manualbp", "IMPL")


def _cast_dtype(policy, device_type):
    """The dtype autocast asks for on this device type, None where autocast is off."""
    if not torch._C._is_any_autocast_enabled():  # the common case, answered in one call
        return None
    if not is_autocast_available(device_type) or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type) if policy == LOWER_PRECISION else torch.float32


def _eligible(value, device_type):
    """Native autocast's rule: a floating tensor on the autocast device, float64 excepted."""
    return (
        isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and value.dtype != torch.float64
        and value.device.type == device_type
    )


def cast_for_autocast(policy, device_type, *args):
    """args with the eligible tensors cast as `policy` says when autocast is on for device_type."""
    dtype = _cast_dtype(policy, device_type)
    if dtype is None:
        return args
    return tuple(arg.to(dtype) if _eligible(arg, device_type) else arg for arg in args)


def register_autocast(op_name, policy):
    """The AutocastCPU and AutocastCUDA kernels of torch_manualbp::<op_name>: cast as `policy` says, then
    run the op with autocast off."""
    op = getattr(torch.ops.torch_manualbp, op_name).default
    for device_type, dispatch_key in _AUTOCAST_DISPATCH_KEYS.items():
        _autocast_library.impl(op_name, _autocast_kernel(op, policy, device_type), dispatch_key)


def _autocast_kernel(op, policy, device_type):
    def autocast_kernel(*args):
        args = cast_for_autocast(policy, device_type, *args)
        with torch.autocast(device_type, enabled=False):
            return op(*args)

    return autocast_kernel


# ---- argument checks -----------------------------------------------------------------------------------
# What C++ cannot see: the Python types of the arguments (a non-tensor is refused before the dispatcher,
# with torch's own wording) and non-tensor options. Tensor checks live in csrc/.


def check_tensor(fn, name, value, optional=False):
    if isinstance(value, torch.Tensor) or (optional and value is None):
        return
    expected = "Tensor or None" if optional else "Tensor"
    raise TypeError(f"{fn}(): argument '{name}' must be {expected}, not {type(value).__name__}")


def check_reduction(value):
    """'none', 'mean' or 'sum', as torch: a ValueError naming the value otherwise."""
    if value not in ("none", "mean", "sum"):
        raise ValueError(f"{value} is not a valid value for reduction (expected 'none', 'mean' or 'sum')")


def check_int(fn, name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{fn}(): argument '{name}' must be int, not {type(value).__name__}")


def check_float(fn, name, value, optional=False):
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        expected = "float or None" if optional else "float"
        raise TypeError(f"{fn}(): argument '{name}' must be {expected}, not {type(value).__name__}")


# ---- batching (register_vmap rules) --------------------------------------------------------------------
# A rule receives the arguments with the vmapped dim at in_dims[i] (None: not batched) and returns the
# batched result and where its vmapped dim is. It first tries to fold the vmapped dim into the leading
# dims that the op already handles (one kernel call for the whole batch); where the batch does not fold,
# it runs the op once per sample (per_sample) and stacks the results.


def batch_first(tensor, bdim, batch_size):
    """The tensor with its vmapped dim in front; an unbatched one expanded (a view, no copy)."""
    if bdim is None:
        return tensor.expand(batch_size, *tensor.shape)
    return tensor.movedim(bdim, 0)


def right_aligned(tensor, bdim, rank):
    """A batched tensor that broadcasts against a (B, ...) tensor of `rank` dims: (B, 1, ..., 1, *shape).

    Broadcasting aligns shapes from the right, so a per-sample shape that broadcasts to the per-sample
    output keeps doing so once the ones are inserted after the vmapped dim. Unbatched: left as it is.
    """
    if bdim is None:
        return tensor
    tensor = tensor.movedim(bdim, 0)
    return tensor.reshape(tensor.shape[0], *([1] * (rank - tensor.dim())), *tensor.shape[1:])


def per_sample(op, info, in_dims, args):
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


def check_loss_options(op, label_smoothing, lse_square_scale, softcap):
    """The cross-entropy options every loss op takes, checked as its C++ does (same messages): fake kernels."""
    torch._check(
        0.0 <= label_smoothing <= 1.0,
        lambda: f"{op}: label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}",
    )
    torch._check(
        math.isfinite(lse_square_scale) and lse_square_scale >= 0.0,
        lambda: f"{op}: expected lse_square_scale to be a finite number >= 0, but got lse_square_scale={lse_square_scale}",
    )
    torch._check(
        softcap is None or (math.isfinite(softcap) and softcap > 0.0),
        lambda: f"{op}: expected softcap to be None or a finite number > 0, but got softcap={softcap}",
    )
