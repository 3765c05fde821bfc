"""GroupDRO: group distributionally robust optimisation (Sagawa et al., arXiv 1911.08731,
Algorithm 1), with the training domains as groups.

Each update raises the weight ``q`` of every domain in proportion to ``exp(eta · risk)``
and minimises the ``q``-weighted sum of the per-domain risks, so the worst domain
dominates. ``q`` is a buffer: a resumed run continues with the same weights.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from domainbed.algorithms._support import domain_risks, pool
from domainbed.algorithms.base import Algorithm, LossOutput, Minibatches
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.hparam import HParam, log_uniform


def groupdro_weights(q: Tensor, losses: Tensor, eta: float) -> Tensor:
    """Exponentiated-gradient step on the domain weights: ``q_i ∝ q_i · exp(eta · loss_i)``,
    normalised to sum to 1. ``losses`` is treated as a constant (no gradient flows to it)."""
    if q.shape != losses.shape or q.dim() != 1:
        raise ValueError(f"groupdro_weights expects q and losses of the same 1-D shape; got {tuple(q.shape)}, {tuple(losses.shape)}")
    q = q * torch.exp(eta * losses.detach().to(q.dtype))
    return q / q.sum()


@register_algorithm
class GroupDRO(Algorithm):
    """``Σ_i q_i · risk_i`` with ``q`` updated by :func:`groupdro_weights` before each step."""

    EXPOSES_FEATURES = True
    HPARAMS = {"groupdro_eta": HParam(1e-2, log_uniform(-3, -1), "step size of the domain weights' exponentiated-gradient update")}

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Mapping[str, Any]):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.register_buffer("q", torch.full((num_domains,), 1.0 / num_domains))

    def compute_loss(self, minibatches: Minibatches) -> LossOutput:
        if len(minibatches) != self.num_domains:
            raise ValueError(f"GroupDRO was built for {self.num_domains} training domains but got {len(minibatches)} minibatches")
        x, y, sizes = pool(minibatches)
        feats = self.featurize(x)
        logits = self.classifier(feats.final)
        losses = domain_risks(logits, y, sizes)
        q = groupdro_weights(self.q, losses, float(self.hparams["groupdro_eta"]))
        self.q.copy_(q)
        loss = (q * losses).sum()
        logs = {"loss_ce": losses.mean().detach(), "groupdro_q_max": q.max()}
        return loss, logs, {"x": x, "y": y, "features": feats, "logits": logits}
