"""Checks of what C++ cannot see: the Python types of the arguments (a non-tensor is refused before
the dispatcher, with torch's own wording) and non-tensor options. Tensor checks live in csrc/."""
import torch


def check_tensor(fn, name, value, optional=False):
    if isinstance(value, torch.Tensor) or (optional and value is None):
        return
    expected = "Tensor or None" if optional else "Tensor"
    raise TypeError(f"{fn}(): argument '{name}' must be {expected}, not {type(value).__name__}")
