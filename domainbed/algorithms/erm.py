"""ERM: empirical risk minimisation over the pooled source domains (DomainBed's baseline)."""

from __future__ import annotations

from domainbed.algorithms._support import pool
from domainbed.algorithms.base import Algorithm, LossOutput, Minibatches, cross_entropy
from domainbed.algorithms.registry import register_algorithm


@register_algorithm
class ERM(Algorithm):
    """Cross-entropy on the concatenation of every source domain's minibatch."""

    EXPOSES_FEATURES = True

    def compute_loss(self, minibatches: Minibatches) -> LossOutput:
        x, y, _ = pool(minibatches)
        feats = self.featurize(x)
        logits = self.classifier(feats.final)
        loss = cross_entropy(logits, y)
        return loss, {"loss_ce": loss.detach()}, {"x": x, "y": y, "features": feats, "logits": logits}
