"""The demo's data set, generated on the spot (no download): interleaved 2-D spiral arms, one per class."""
import torch


def make_spiral(points_per_class=100, classes=3, noise=0.2, seed=0):
    """Points on `classes` spiral arms around the origin, with Gaussian noise on the angle.

    Arm k sweeps the radius from 0 to 1 while its angle turns through 4 radians, starting at 4k; the arms
    interleave, so no linear classifier separates them. Same seed, same points, on every machine.

    Returns:
        points ``(classes * points_per_class, 2)`` float32 and labels ``(classes * points_per_class,)`` int64.
    """
    generator = torch.Generator().manual_seed(seed)
    radius = torch.linspace(0.0, 1.0, points_per_class)
    points, labels = [], []
    for arm in range(classes):
        start = 4.0 * arm
        angle = torch.linspace(start, start + 4.0, points_per_class)
        angle = angle + noise * torch.randn(points_per_class, generator=generator)
        points.append(torch.stack([radius * torch.sin(angle), radius * torch.cos(angle)], dim=1))
        labels.append(torch.full((points_per_class,), arm, dtype=torch.int64))
    return torch.cat(points), torch.cat(labels)
