"""Diagnostics of a frozen prior's features: which channels carry information about the image.

A channel is *dead* on a batch when its value does not vary across the images of the batch
(standard deviation below ``tol``): a prior term on it pulls every image toward the same
constant, which is generic shrinkage, not information from pre-training. EfficientNet-Lite0
with its ImageNet BatchNorm statistics on 32-px digits is the case that motivated this: its
pooled features are almost all exactly 0.
"""

from __future__ import annotations

import torch

MOSTLY_DEAD = 0.5  # warn above this fraction


def dead_channel_fraction(features: torch.Tensor, tol: float = 1e-6) -> float:
    """Fraction of channels (dim 1) whose per-image value is constant over the batch.

    ``features``: ``(N, C)`` pooled features or ``(N, C, H, W)`` maps, which are first
    averaged over space (a channel whose spatial mean never varies carries no image
    information at the level the prior compares)."""
    if features.dim() < 2 or features.shape[0] < 2:
        raise ValueError("dead_channel_fraction needs a batch of at least 2 images with a channel dimension")
    per_image = features.float().flatten(2).mean(-1) if features.dim() > 2 else features.float()
    return float((per_image.std(dim=0) < tol).float().mean())


def liveness_report(names: list[str], features: list[torch.Tensor]) -> tuple[str, list[str]]:
    """A one-line-per-layer report of dead fractions, and the names of mostly dead layers."""
    lines, dead = [], []
    for name, f in zip(names, features):
        frac = dead_channel_fraction(f)
        lines.append(f"  {name}: {f.shape[1]} channels, {100 * frac:.1f}% dead")
        if frac > MOSTLY_DEAD:
            dead.append(name)
    return "\n".join(lines), dead
