"""V-REx: Risk Extrapolation (Krueger et al., arXiv 2003.00688), the variance form.

The penalty is the variance of the per-domain risks; like IRM in DomainBed, its weight is 1
for a warm-up and ``vrex_lambda`` afterwards, with Adam reset at the switch.
"""

from __future__ import annotations

from torch import Tensor

from domainbed.algorithms._support import domain_risks, pool
from domainbed.algorithms.annealing import AnnealedPenalty, int_log_uniform
from domainbed.algorithms.base import LossOutput, Minibatches
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.hparam import HParam, log_uniform


def vrex_penalty(losses: Tensor) -> Tensor:
    """Variance of the per-domain risks ``losses`` (shape ``(n_domains,)``), normalised by
    ``n_domains`` (not ``n - 1``), as in V-REx. Differentiable in ``losses``."""
    if losses.dim() != 1 or losses.numel() == 0:
        raise ValueError(f"vrex_penalty expects a 1-D tensor of per-domain risks; got shape {tuple(losses.shape)}")
    return (losses - losses.mean()).pow(2).mean()


@register_algorithm
class VREx(AnnealedPenalty):
    """Mean per-domain cross-entropy + weight × variance of the per-domain cross-entropies."""

    EXPOSES_FEATURES = True
    LAMBDA_HPARAM = "vrex_lambda"
    ANNEAL_HPARAM = "vrex_penalty_anneal_iters"
    HPARAMS = {
        "vrex_lambda": HParam(1e1, log_uniform(-1, 5), "weight of the variance penalty after the anneal iterations"),
        "vrex_penalty_anneal_iters": HParam(500, int_log_uniform(0, 4), "updates with penalty weight 1 before vrex_lambda applies"),
    }

    def compute_loss(self, minibatches: Minibatches) -> LossOutput:
        x, y, sizes = pool(minibatches)
        feats = self.featurize(x)
        logits = self.classifier(feats.final)
        losses = domain_risks(logits, y, sizes)
        mean = losses.mean()
        penalty = vrex_penalty(losses)
        loss = mean + self.penalty_weight() * penalty
        logs = {"loss_ce": mean.detach(), "penalty_vrex": penalty.detach()}
        return loss, logs, {"x": x, "y": y, "features": feats, "logits": logits}
