"""MMD: align the feature distributions of every pair of training domains by their maximum
mean discrepancy (MMD-AAE, Li et al., CVPR 2018, "Domain Generalization with Adversarial
Feature Learning"; the kernel form DomainBed uses).

The kernel is a sum of Gaussian kernels ``Σ_g exp(-g · ‖a - b‖²)`` over the bandwidths
:data:`DEFAULT_GAMMAS`; the penalty is the biased MMD² estimate
``mean K(x, x) + mean K(y, y) - 2 mean K(x, y)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from domainbed.algorithms._support import domain_risks, mean_over_domain_pairs, pool
from domainbed.algorithms.base import Algorithm, LossOutput, Minibatches
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.hparam import HParam, log_uniform

DEFAULT_GAMMAS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """``‖x_i - y_j‖²`` for every pair, via the norms, clamped at 1e-30 (rounding can make
    the expansion slightly negative)."""
    d = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0) - 2.0 * x @ y.T
    return d.clamp_min(1e-30)


def gaussian_kernel(x: Tensor, y: Tensor, gammas: Sequence[float] = DEFAULT_GAMMAS) -> Tensor:
    """The ``(n_x, n_y)`` matrix ``Σ_g exp(-g · ‖x_i - y_j‖²)``."""
    d = squared_distances(x, y)
    return sum(torch.exp(-g * d) for g in gammas)  # type: ignore[return-value]


def mmd_penalty(x: Tensor, y: Tensor, gammas: Sequence[float] = DEFAULT_GAMMAS) -> Tensor:
    """Biased MMD² between feature batches ``x`` ``(n_x, d)`` and ``y`` ``(n_y, d)`` under the
    multi-bandwidth Gaussian kernel. Computed in fp32 with autocast off (fp64 stays fp64)."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"mmd_penalty expects 2-D feature batches of equal width; got {tuple(x.shape)}, {tuple(y.shape)}")
    if not gammas:
        raise ValueError("mmd_penalty needs at least one kernel bandwidth in gammas")
    with torch.autocast(x.device.type, enabled=False):
        x = x if x.dtype == torch.float64 else x.float()
        y = y if y.dtype == torch.float64 else y.float()
        return gaussian_kernel(x, x, gammas).mean() + gaussian_kernel(y, y, gammas).mean() - 2 * gaussian_kernel(x, y, gammas).mean()


@register_algorithm
class MMD(Algorithm):
    """Mean per-domain cross-entropy + ``mmd_gamma`` × mean MMD penalty over domain pairs."""

    EXPOSES_FEATURES = True
    HPARAMS = {"mmd_gamma": HParam(1.0, log_uniform(-1, 1), "weight of the MMD penalty")}

    def compute_loss(self, minibatches: Minibatches) -> LossOutput:
        x, y, sizes = pool(minibatches)
        feats = self.featurize(x)
        logits = self.classifier(feats.final)
        ce = domain_risks(logits, y, sizes).mean()
        penalty = mean_over_domain_pairs(torch.split(feats.final, sizes), mmd_penalty)
        loss = ce + self.hparams["mmd_gamma"] * penalty
        logs = {"loss_ce": ce.detach(), "penalty_mmd": penalty.detach()}
        return loss, logs, {"x": x, "y": y, "features": feats, "logits": logits}
