"""Deep CORAL (Sun & Saenko, arXiv 1607.01719): align feature means and covariances across domains."""

from __future__ import annotations

import torch

from domainbed.algorithms._support import domain_risks, mean_over_domain_pairs, pool
from domainbed.algorithms.base import Algorithm, LossOutput, Minibatches
from domainbed.algorithms.penalties import coral_penalty
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.hparam import HParam, log_uniform


@register_algorithm
class CORAL(Algorithm):
    """Mean per-domain cross-entropy + ``mmd_gamma`` × mean CORAL penalty over domain pairs."""

    EXPOSES_FEATURES = True
    HPARAMS = {"mmd_gamma": HParam(1.0, log_uniform(-1, 1), "weight of the CORAL penalty")}

    def compute_loss(self, minibatches: Minibatches) -> LossOutput:
        x, y, sizes = pool(minibatches)
        # One forward pass for every domain; split the features afterwards.
        feats = self.featurize(x)
        logits = self.classifier(feats.final)
        ce = domain_risks(logits, y, sizes).mean()
        penalty = mean_over_domain_pairs(torch.split(feats.final, sizes), coral_penalty)
        loss = ce + self.hparams["mmd_gamma"] * penalty
        logs = {"loss_ce": ce.detach(), "penalty_coral": penalty.detach()}
        return loss, logs, {"x": x, "y": y, "features": feats, "logits": logits}
