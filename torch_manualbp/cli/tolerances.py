"""How far the library's gradients may lie from autograd's, per dtype: the one table that `demo`, `check`
and examples/ judge by.

Both sides compute the same sums in a different order (and, for bfloat16/float16, round intermediate
results at different places), so they differ by rounding: a few units in the last place of the dtype,
scaled by the size of the values. A hand-derived formula that is wrong differs by far more.
"""
import torch

# dtype: (relative to the largest |autograd gradient| of the tensor, absolute floor). The floors of the
# 16-bit dtypes are large: a gradient that sums a few hundred rows of equal terms (a bias over a batch)
# adds their rounding errors coherently, rows x unit roundoff x |term|, while the sum itself may cancel.
GRADIENT_TOLERANCES = {
    torch.float64: (1e-9, 1e-12),
    torch.float32: (1e-4, 1e-6),
    torch.bfloat16: (5e-2, 4e-3),
    torch.float16: (1e-2, 5e-4),
}


def max_abs_difference(ours, reference):
    """The largest |ours - reference| over all elements, in float64 (0.0 for empty tensors)."""
    if ours.numel() == 0:
        return 0.0
    return (ours.double() - reference.double()).abs().max().item()


def allowed_difference(reference, dtype=None):
    """The largest difference from `reference` that still counts as agreement for a value of `dtype`
    (default: reference's own dtype)."""
    rtol, atol = GRADIENT_TOLERANCES[dtype or reference.dtype]
    scale = reference.detach().abs().max().item() if reference.numel() > 0 else 0.0
    return atol + rtol * scale


def agrees(difference, allowed):
    """Whether a difference is within the allowed one; a NaN difference never is."""
    return difference <= allowed
