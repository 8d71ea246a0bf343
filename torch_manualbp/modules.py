"""Drop-in nn.Modules."""
import torch
from torch import nn

from .functional import linear_sigmoid, softmax_cross_entropy

__all__ = ["LinearSigmoid", "SoftmaxCrossEntropyLoss"]


class LinearSigmoid(nn.Module):
    """``nn.Sequential(nn.Linear(in_features, out_features, bias), nn.Sigmoid())`` as one fused layer.

    Same parameters as ``nn.Linear`` (``weight`` ``(out_features, in_features)``, ``bias``
    ``(out_features,)`` or ``None``), same initialization, same state_dict keys.
    """

    __constants__ = ["in_features", "out_features"]

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty((out_features, in_features), **factory_kwargs))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory_kwargs))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        """nn.Linear's initialization, by nn.Linear's own code."""
        nn.Linear.reset_parameters(self)

    def forward(self, input):
        return linear_sigmoid(input, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class SoftmaxCrossEntropyLoss(nn.Module):
    """A drop-in for ``nn.CrossEntropyLoss``: softmax over dim 1 and cross-entropy fused, with a
    hand-written backward. Same arguments, defaults, values, gradients and state_dict keys; ``weight``
    is a buffer, so it follows the module's ``.to()``.
    """

    __constants__ = ["ignore_index", "reduction", "label_smoothing"]

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing

    def forward(self, input, target):
        return softmax_cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )

    def extra_repr(self):
        weight = "None" if self.weight is None else f"({self.weight.shape[0]},)"
        return (
            f"weight={weight}, ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing}"
        )
