"""SelfReg: self-supervised contrastive regularisation (Kim et al., arXiv 2104.09841).

Every sample is pulled toward another sample of its class (individualized in-class
regularisation) and toward a mixup of two such samples (heterogeneous in-class
regularisation), both on logits and on features passed through a projection MLP.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from domainbed.algorithms._support import pool
from domainbed.algorithms.base import Algorithm, LossOutput, Minibatches, cross_entropy
from domainbed.algorithms.registry import register_algorithm

FEATURE_WEIGHT = 0.3  # weight of the feature terms relative to the logit terms (the paper's)


def in_class_partners(y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random permutation of the indices of ``y`` that maps each sample to a sample of
    the same class (possibly itself): ``y[partners] == y``."""
    order = torch.argsort(y, stable=True)  # samples grouped by class
    # Grouped by class again, but in a random order within each class.
    noise = torch.rand(y.shape, generator=generator, device="cpu").to(y.device)
    shuffled = torch.argsort(y.double() + 0.5 * noise, stable=True)
    partners = torch.empty_like(order)
    partners[order] = shuffled  # k-th slot of a class group in ``order`` gets its k-th shuffled member
    return partners


def selfreg_regularizer(
    logits: torch.Tensor,
    features: torch.Tensor,
    projected: torch.Tensor,
    partners_a: torch.Tensor,
    partners_b: torch.Tensor,
    lam: float | torch.Tensor,
) -> torch.Tensor:
    """``lam · (L_ind_logit + L_ind_feat) + (1 - lam) · (L_hdl_logit + L_hdl_feat)``.

    ``L_ind``: mean squared error between each sample and its partner ``a`` (logits, and
    features vs the partner's projected features × 0.3); ``L_hdl``: the same against the
    mixup ``lam · partner_a + (1 - lam) · partner_b``. Computed in fp32.
    """
    logits, features, projected = logits.float(), features.float(), projected.float()
    logit_a, proj_a = logits[partners_a], projected[partners_a]
    logit_mix = lam * logit_a + (1 - lam) * logits[partners_b]
    proj_mix = lam * proj_a + (1 - lam) * projected[partners_b]
    individual = F.mse_loss(logits, logit_a) + FEATURE_WEIGHT * F.mse_loss(features, proj_a)
    heterogeneous = F.mse_loss(logits, logit_mix) + FEATURE_WEIGHT * F.mse_loss(features, proj_mix)
    return lam * individual + (1 - lam) * heterogeneous


@register_algorithm
class SelfReg(Algorithm):
    """Pooled cross-entropy + ``min(CE, 1)`` × :func:`selfreg_regularizer`, ``lam ~ Beta(0.5, 0.5)``.

    The projection MLP is trained with the network (in DomainBed it is created after the
    optimizer and so stays at its initial weights; the paper trains it).
    """

    EXPOSES_FEATURES = True

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Any):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        d = self.featurizer.n_outputs
        hidden = d if d == 2048 else 2 * d
        self.projection = nn.Sequential(
            nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, d), nn.BatchNorm1d(d),
        )

    def param_groups(self) -> list[dict[str, Any]]:
        groups = super().param_groups()
        groups[0]["params"] = groups[0]["params"] + list(self.projection.parameters())
        return groups

    def compute_loss(self, minibatches: Minibatches) -> LossOutput:
        x, y, _ = pool(minibatches)
        feats = self.featurize(x)
        logits = self.classifier(feats.final)
        projected = self.projection(feats.final)
        lam = float(torch.distributions.Beta(0.5, 0.5).sample())  # on the CPU: no device sync
        reg = selfreg_regularizer(logits, feats.final, projected, in_class_partners(y), in_class_partners(y), lam)
        ce = cross_entropy(logits, y)
        # Scale by min(CE, 1) as a tensor: no host synchronisation.
        loss = ce + ce.detach().clamp(max=1.0) * reg
        logs = {"loss_ce": ce.detach(), "penalty_selfreg": reg.detach()}
        return loss, logs, {"x": x, "y": y, "features": feats, "logits": logits}
