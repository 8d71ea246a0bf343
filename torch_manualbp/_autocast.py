"""Autocast (torch.autocast, CPU and CUDA): the layers follow the precision rules of their native
counterparts, with the autocast dtype read at call time, as native autocast does.

  LinearSigmoid        like F.linear, on autocast's lower-precision list: floating tensors other than
                       float64 are cast to the autocast dtype (bfloat16, float16).
  SoftmaxCrossEntropy  like F.cross_entropy, on autocast's float32 list: floating tensors other than
                       float64 are cast to float32.

The functional API casts before its autograd.Function (torch_manualbp/functional.py): autograd records
the casts, so gradients of float32 parameters come back in float32, and the Function saves the tensors
its op really ran on. The ops called directly (torch.ops.torch_manualbp.*) get the same casts from the
Autocast kernels registered below, which then run the op with autocast off, as native ops do.
"""
import torch

from ._compat import is_autocast_available

LOWER_PRECISION = "lower_precision"
FLOAT32 = "float32"

_OP_POLICIES = {
    "linear_sigmoid_forward": LOWER_PRECISION,
    "linear_sigmoid_backward": LOWER_PRECISION,
    "softmax_cross_entropy_forward": FLOAT32,
    "softmax_cross_entropy_backward": FLOAT32,
}
_AUTOCAST_DISPATCH_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA"}


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


def _register_autocast_kernel(library, op_name, policy, device_type):
    op = getattr(torch.ops.torch_manualbp, op_name).default

    def autocast_kernel(*args):
        args = cast_for_autocast(policy, device_type, *args)
        with torch.autocast(device_type, enabled=False):
            return op(*args)

    library.impl(op_name, autocast_kernel, _AUTOCAST_DISPATCH_KEYS[device_type])


_library = torch.library.Library("torch_manualbp", "IMPL")
for _op_name, _policy in _OP_POLICIES.items():
    for _device_type in _AUTOCAST_DISPATCH_KEYS:
        _register_autocast_kernel(_library, _op_name, _policy, _device_type)
