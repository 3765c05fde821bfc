"""Plain, differentiable penalty functions that algorithms add to their loss (docs/design.md).

Each function here is usable outside the trainer and is tested alone (tests/test_penalties.py):

- :func:`coral_penalty` -- the CORAL alignment term (Sun & Saenko, arXiv 1607.01719),
  as DomainBed's CORAL algorithm uses it (and CausIRL_CORAL).
- :func:`fp32_region` / :func:`to_fp32` -- how every penalty here (and FT-LP's Gaussian KL,
  ``ftlp/gaussian.py``) computes in fp32 even when called with bf16/fp16 tensors inside an
  autocast region: the terms subtract nearly equal numbers (covariances, log-variances),
  which half precision cannot resolve.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch
from torch import Tensor

__all__ = ["coral_penalty", "fp32_region", "to_fp32"]


def fp32_region(*tensors: Tensor) -> ContextManager[None]:
    """A context that switches autocast off on the tensors' device type.

    Casting inputs up is not enough on its own: inside an autocast region, ops such as
    ``matmul`` would cast them straight back down.
    """
    device_type = tensors[0].device.type
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    # Devices without autocast (e.g. "meta") cannot be in an autocast region anyway.
    return contextlib.nullcontext()


def to_fp32(t: Tensor) -> Tensor:
    """``t`` in float32, except that float64 stays float64: only half precisions are promoted."""
    return t if t.dtype == torch.float64 else t.float()


def coral_penalty(x: Tensor, y: Tensor) -> Tensor:
    """CORAL distance between two batches of features (Sun & Saenko, arXiv 1607.01719).

    The DomainBed form: the mean over features of the squared difference of the feature
    means, plus the mean over entries of the squared difference of the covariance
    matrices, the covariances with the unbiased ``n - 1`` normalisation.

    Args:
        x: features of one domain, shape ``(n_x, d)``, ``n_x >= 2``.
        y: features of another domain, shape ``(n_y, d)``, ``n_y >= 2``.

    Returns:
        A scalar fp32 tensor (fp64 if both inputs are fp64), differentiable in both inputs.
    """
    if x.dim() != 2 or y.dim() != 2:
        raise ValueError(
            f"coral_penalty expects 2-D feature batches (n, d); got shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)}. Flatten the features first."
        )
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"coral_penalty needs the same feature width in both batches; got "
            f"{x.shape[1]} and {y.shape[1]}."
        )
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(
            "coral_penalty needs at least 2 samples per batch for an unbiased covariance; "
            f"got {x.shape[0]} and {y.shape[0]}. Increase the batch size."
        )
    with fp32_region(x, y):
        x = to_fp32(x)
        y = to_fp32(y)
        mean_x = x.mean(dim=0, keepdim=True)
        mean_y = y.mean(dim=0, keepdim=True)
        centred_x = x - mean_x
        centred_y = y - mean_y
        cov_x = centred_x.T @ centred_x / (x.shape[0] - 1)
        cov_y = centred_y.T @ centred_y / (y.shape[0] - 1)
        mean_term = (mean_x - mean_y).pow(2).mean()
        cov_term = (cov_x - cov_y).pow(2).mean()
        return mean_term + cov_term


