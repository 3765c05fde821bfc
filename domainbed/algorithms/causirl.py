"""CausIRL_CORAL and CausIRL_MMD: causality-inspired invariant representation learning
(Chevalley et al., arXiv 2206.11646).

Instead of matching feature distributions across domains (CORAL, MMD), CausIRL splits
every domain's minibatch at a random point, pools the first parts and the second parts,
and matches those two pools: an estimate of the interventional distribution that does not
need the domains to share a style distribution.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from domainbed.algorithms._support import domain_risks, pool
from domainbed.algorithms.base import Algorithm, LossOutput, Minibatches
from domainbed.algorithms.penalties import coral_penalty
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.hparam import HParam, log_uniform

MMD_GAMMAS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def gaussian_kernel_mmd(x: torch.Tensor, y: torch.Tensor, gammas: Sequence[float] = MMD_GAMMAS) -> torch.Tensor:
    """Biased MMD² between feature batches with a sum of Gaussian kernels (DomainBed's MMD).

    ``k(a, b) = Σ_γ exp(-γ ‖a - b‖²)``; the result is ``mean k(x, x') + mean k(y, y')
    - 2 mean k(x, y)`` over all pairs, self-pairs included. Squared distances are
    clamped at 1e-30 from below. Computed in fp32.
    """
    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        sq = (a.pow(2).sum(1, keepdim=True) - 2 * a @ b.T + b.pow(2).sum(1)[None, :]).clamp_min(1e-30)
        return sum(torch.exp(-g * sq) for g in gammas)

    x, y = x.float(), y.float()
    return kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean()


def causirl_halves(features: Sequence[torch.Tensor], cuts: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool ``features[i][:cuts[i]]`` over domains into one batch and ``features[i][cuts[i]:]`` into another."""
    if len(features) != len(cuts):
        raise ValueError(f"causirl_halves needs one cut per domain; got {len(cuts)} cuts for {len(features)} domains")
    first = torch.cat([f[:c] for f, c in zip(features, cuts)])
    second = torch.cat([f[c:] for f, c in zip(features, cuts)])
    return first, second


class _CausIRLBase(Algorithm):
    """Mean domain cross-entropy + ``mmd_gamma`` × distance between the two pooled parts."""

    EXPOSES_FEATURES = True
    HPARAMS = {"mmd_gamma": HParam(1.0, log_uniform(-1, 1), "weight of the distribution-matching penalty")}
    distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def compute_loss(self, minibatches: Minibatches) -> LossOutput:
        x, y, sizes = pool(minibatches)
        feats = self.featurize(x)
        logits = self.classifier(feats.final)
        ce = domain_risks(logits, y, sizes).mean()
        # Each domain's cut is uniform in [0, n_i), drawn on the CPU: no device synchronisation.
        cuts = [int(torch.randint(0, n, ())) for n in sizes]
        first, second = causirl_halves(torch.split(feats.final, sizes), cuts)
        if len(first) > 1 and len(second) > 1:
            penalty = torch.nan_to_num(self.distance(first, second))
        else:  # a covariance or a kernel mean needs two samples on each side
            penalty = ce.new_zeros(())
        loss = ce + self.hparams["mmd_gamma"] * penalty
        logs = {"loss_ce": ce.detach(), "penalty_causirl": penalty.detach()}
        return loss, logs, {"x": x, "y": y, "features": feats, "logits": logits}


@register_algorithm
class CausIRL_CORAL(_CausIRLBase):
    """CausIRL with the CORAL distance (means and covariances)."""

    distance = staticmethod(coral_penalty)


@register_algorithm
class CausIRL_MMD(_CausIRLBase):
    """CausIRL with the Gaussian-kernel MMD."""

    distance = staticmethod(gaussian_kernel_mmd)
