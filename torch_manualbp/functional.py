"""The functional API: argument normalisation, then the autograd.Function of each layer."""
from ._checks import check_tensor
from .functions import LinearSigmoidFunction

__all__ = ["linear_sigmoid"]


def linear_sigmoid(input, weight, bias=None):
    """sigmoid(input @ weight.T + bias), fused, with a hand-written backward.

    Args:
        input: ``(*, in_features)``, any number of leading dims (none: a 1-D input).
        weight: ``(out_features, in_features)``.
        bias: ``None``, ``(out_features,)`` or any shape that broadcasts to the output
            (e.g. a per-sample ``(N, out_features)``); its gradient comes back in its own shape.

    Returns:
        ``(*, out_features)``, the dtype of ``input``.
    """
    check_tensor("linear_sigmoid", "input", input)
    check_tensor("linear_sigmoid", "weight", weight)
    check_tensor("linear_sigmoid", "bias", bias, optional=True)
    return LinearSigmoidFunction.apply(input, weight, bias)
