"""SD, spectral decoupling (Pezeshki et al., "Gradient Starvation", arXiv 2011.09468, eq. 25)."""

from __future__ import annotations

import torch

from domainbed.algorithms._support import pool
from domainbed.algorithms.base import Algorithm, LossOutput, Minibatches, cross_entropy
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.hparam import HParam, log_uniform


def spectral_decoupling_penalty(logits: torch.Tensor) -> torch.Tensor:
    """Mean squared logit, ``mean(logits ** 2)`` over samples and classes, in fp32.

    Penalising the logits' magnitude decouples the features' learning dynamics, so a
    feature learnt early cannot starve the gradient of the others.
    """
    return logits.float().pow(2).mean()


@register_algorithm
class SD(Algorithm):
    """Cross-entropy on the pooled domains + ``sd_reg`` × :func:`spectral_decoupling_penalty`."""

    EXPOSES_FEATURES = True
    HPARAMS = {"sd_reg": HParam(0.1, log_uniform(-5, -1), "weight of the squared-logit penalty")}

    def compute_loss(self, minibatches: Minibatches) -> LossOutput:
        x, y, _ = pool(minibatches)
        feats = self.featurize(x)
        logits = self.classifier(feats.final)
        ce = cross_entropy(logits, y)
        penalty = spectral_decoupling_penalty(logits)
        loss = ce + self.hparams["sd_reg"] * penalty
        logs = {"loss_ce": ce.detach(), "penalty_sd": penalty.detach()}
        return loss, logs, {"x": x, "y": y, "features": feats, "logits": logits}
