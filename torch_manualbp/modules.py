"""Drop-in nn.Modules."""
import torch
from torch import nn

from .functional import linear_cross_entropy, linear_sigmoid, softmax_cross_entropy

__all__ = ["LinearCrossEntropyLoss", "LinearSigmoid", "SoftmaxCrossEntropyLoss"]


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
    is a buffer, so it follows the module's ``.to()``. Besides them (keyword-only) the z-loss
    (``lse_square_scale``) and the ``softcap`` of the logits, and ``process_group`` (vocab-parallel: the input
    is this rank's block of the classes); see ``torch_manualbp.functional.softmax_cross_entropy``.
    """

    __constants__ = ["ignore_index", "reduction", "label_smoothing", "lse_square_scale", "softcap"]

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, *,
                 lse_square_scale=0.0, softcap=None, process_group=None):
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.lse_square_scale = lse_square_scale
        self.softcap = softcap
        # Vocab-parallel: the input is this rank's block of the classes (functional.softmax_cross_entropy).
        self.process_group = process_group

    def forward(self, input, target):
        return softmax_cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            lse_square_scale=self.lse_square_scale,
            softcap=self.softcap,
            process_group=self.process_group,
        )

    def extra_repr(self):
        weight = "None" if self.weight is None else f"({self.weight.shape[0]},)"
        return (
            f"weight={weight}, ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing}, lse_square_scale={self.lse_square_scale}, softcap={self.softcap}"
        )


class LinearCrossEntropyLoss(nn.Module):
    """A drop-in for ``nn.LinearCrossEntropyLoss``: the output projection ``linear`` (an ``nn.Linear(in_features,
    num_classes, bias)``) and the cross-entropy fused, the logits never materialised, with a hand-written backward.

    Same arguments, defaults, submodule and state_dict keys (``linear.weight``, ``linear.bias``, the class
    ``weight`` buffer), so a checkpoint of torch's module loads unchanged; besides them the z-loss
    (``lse_square_scale``), the ``softcap`` of the logits, and ``chunk_budget`` (bytes of logits held at once;
    an attribute, so it may be changed between calls). With ``process_group`` (vocab-parallel) ``num_classes``,
    ``linear`` and ``weight`` are this rank's contiguous block of the classes, blocks in rank order. See
    ``torch_manualbp.functional.linear_cross_entropy``.
    """

    __constants__ = ["num_classes", "reduction", "ignore_index", "label_smoothing", "lse_square_scale", "softcap"]

    def __init__(self, in_features, num_classes, *, bias=False, device=None, dtype=None, reduction="mean",
                 weight=None, ignore_index=-100, label_smoothing=0.0, lse_square_scale=0.0, softcap=None,
                 chunk_budget=None, process_group=None):
        if weight is not None and weight.shape != (num_classes,):
            raise RuntimeError(f"expected weight shape to be {(num_classes,)}, got {tuple(weight.shape)}")
        if label_smoothing < 0 or label_smoothing > 1.0:
            raise RuntimeError(f"expected label_smoothing to be in range [0, 1], got {label_smoothing}")
        super().__init__()
        self.num_classes = num_classes
        self.linear = nn.Linear(in_features, num_classes, bias=bias, device=device, dtype=dtype)
        self.register_buffer("weight", weight)
        self.reduction = reduction
        self.ignore_index = -100 if ignore_index is None else ignore_index
        self.label_smoothing = label_smoothing
        self.lse_square_scale = lse_square_scale
        self.softcap = softcap
        self.chunk_budget = chunk_budget
        # Vocab-parallel: num_classes, linear and weight are this rank's block of the classes
        # (functional.linear_cross_entropy).
        self.process_group = process_group

    def forward(self, input, target):
        return linear_cross_entropy(
            input,
            self.linear.weight,
            target,
            linear_bias=self.linear.bias,
            weight=self.weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            lse_square_scale=self.lse_square_scale,
            softcap=self.softcap,
            chunk_budget=self.chunk_budget,
            process_group=self.process_group,
        )

    def extra_repr(self):
        weight = "None" if self.weight is None else f"({self.weight.shape[0]},)"
        return (
            f"num_classes={self.num_classes}, weight={weight}, ignore_index={self.ignore_index}, "
            f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}, "
            f"lse_square_scale={self.lse_square_scale}, softcap={self.softcap}"
        )
