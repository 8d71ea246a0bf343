"""The functional API: argument normalisation, then the autograd.Function of each layer."""
import torch

from ._autocast import LOWER_PRECISION, cast_for_autocast
from ._checks import check_tensor
from .functions import LinearSigmoidFunction, apply

__all__ = ["linear_sigmoid"]


def linear_sigmoid(input, weight, bias=None):
    """sigmoid(input @ weight.T + bias), fused, with a hand-written backward.

    Args:
        input: ``(*, in_features)``, any number of leading dims (none: a 1-D input).
        weight: ``(out_features, in_features)``.
        bias: ``None``, ``(out_features,)`` or any shape that broadcasts to the output
            (e.g. a per-sample ``(N, out_features)``); its gradient comes back in its own shape.

    Returns:
        ``(*, out_features)``, the dtype of ``input``; under ``torch.autocast`` the autocast dtype, as
        ``F.linear`` (float64 is never cast).
    """
    check_tensor("linear_sigmoid", "input", input)
    check_tensor("linear_sigmoid", "weight", weight)
    check_tensor("linear_sigmoid", "bias", bias, optional=True)
    input, weight, bias = cast_for_autocast(LOWER_PRECISION, input.device.type, input, weight, bias)
    return apply(LinearSigmoidFunction, torch.ops.torch_manualbp.linear_sigmoid_forward.default, input, weight, bias)
