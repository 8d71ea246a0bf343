"""How far the library's gradients may lie from autograd's, per dtype: the one table that `demo`, `check`
and examples/ judge by.

Both sides compute the same sums in a different order (and, for bfloat16/float16, round intermediate
results at different places), so they differ by rounding: a few units in the last place of the dtype,
scaled by the size of the values. A hand-derived formula that is wrong differs by far more.
"""
import torch

# dtype: (relative to the largest |autograd gradient| of the tensor, absolute floor)
GRADIENT_TOLERANCES = {
    torch.float64: (1e-9, 1e-12),
    torch.float32: (1e-4, 1e-6),
    torch.bfloat16: (5e-2, 1e-3),
    torch.float16: (1e-2, 1e-4),
}


def max_abs_difference(ours, reference):
    """The largest |ours - reference| over all elements, in float64 (0.0 for empty tensors)."""
    if ours.numel() == 0:
        return 0.0
    return (ours.double() - reference.double()).abs().max().item()


def allowed_difference(reference):
    """The largest difference from `reference` that still counts as agreement, for reference's dtype."""
    rtol, atol = GRADIENT_TOLERANCES[reference.dtype]
    scale = reference.detach().abs().max().item() if reference.numel() > 0 else 0.0
    return atol + rtol * scale
