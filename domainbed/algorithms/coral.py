"""Deep CORAL (Sun & Saenko, arXiv 1607.01719): align feature means and covariances across domains."""

from __future__ import annotations

import torch

from domainbed.algorithms.base import Algorithm, LossOutput, Minibatches, cross_entropy
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.hparam import HParam, log_uniform
from domainbed.lib.penalties import coral_penalty


@register_algorithm
class CORAL(Algorithm):
    """Mean per-domain cross-entropy + ``mmd_gamma`` × mean CORAL penalty over domain pairs."""

    EXPOSES_FEATURES = True
    HPARAMS = {"mmd_gamma": HParam(1.0, log_uniform(-1, 1), "weight of the CORAL penalty")}

    def compute_loss(self, minibatches: Minibatches) -> LossOutput:
        sizes = [len(x) for x, _ in minibatches]
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        # One forward pass for every domain; split the features afterwards.
        feats = self.featurize(x)
        logits = self.classifier(feats.final)
        per_domain = torch.split(feats.final, sizes)
        ce = torch.stack([cross_entropy(l, t) for l, t in zip(torch.split(logits, sizes), torch.split(y, sizes))]).mean()
        n = len(minibatches)
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        penalty = (
            torch.stack([coral_penalty(per_domain[i], per_domain[j]) for i, j in pairs]).mean()
            if pairs
            else ce.new_zeros(())
        )
        loss = ce + self.hparams["mmd_gamma"] * penalty
        logs = {"loss_ce": ce.detach(), "penalty_coral": penalty.detach()}
        return loss, logs, {"x": x, "y": y, "features": feats, "logits": logits}
