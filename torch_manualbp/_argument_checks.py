"""Checks of what C++ cannot see: the Python types of the arguments (a non-tensor is refused before
the dispatcher, with torch's own wording) and non-tensor options. Tensor checks live in csrc/."""
import torch


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


def check_float(fn, name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{fn}(): argument '{name}' must be float, not {type(value).__name__}")
