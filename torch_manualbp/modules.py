"""Drop-in nn.Modules."""
import torch
from torch import nn

from .functional import linear_sigmoid

__all__ = ["LinearSigmoid"]


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
