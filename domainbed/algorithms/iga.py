"""IGA: inter-environmental gradient alignment (Koyama & Yamaguchi, arXiv 2008.01883v2).

The penalty is the trace of the covariance of the per-domain loss gradients w.r.t. the
network's parameters; training differentiates through those gradients (double
backpropagation). It is an ordinary loss for one optimizer step, so IGA writes
``compute_loss`` and the base class's update (optimizer, autocast, grad scaler) applies.
"""

from __future__ import annotations

from typing import Sequence

import torch

from domainbed.algorithms._support import network_parameters, pool
from domainbed.algorithms.base import Algorithm, LossOutput, Minibatches, cross_entropy
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.hparam import HParam, log_uniform


def iga_penalty(domain_grads: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """``Σ_e Σ_params ‖g_e - ḡ‖²`` for per-domain gradients ``domain_grads[e][param]``.

    ``ḡ``, the mean over domains, is held constant, as in the paper's code (the gradient
    is the same either way, since the deviations from the mean sum to zero).
    """
    if not domain_grads:
        raise ValueError("iga_penalty needs the gradients of at least one domain")
    total = torch.zeros((), device=domain_grads[0][0].device)
    for per_param in zip(*domain_grads):
        stacked = torch.stack([g.float() for g in per_param])
        total = total + (stacked - stacked.detach().mean(dim=0)).pow(2).sum()
    return total


@register_algorithm
class IGA(Algorithm):
    """Mean domain cross-entropy + ``penalty`` × :func:`iga_penalty` of the domains'
    gradients w.r.t. the featurizer's and classifier's parameters."""

    EXPOSES_FEATURES = True
    HPARAMS = {"penalty": HParam(1000, log_uniform(1, 5), "weight of the gradient-variance penalty")}

    def compute_loss(self, minibatches: Minibatches) -> LossOutput:
        x, y, sizes = pool(minibatches)
        feats = self.featurize(x)
        logits = self.classifier(feats.final)
        risks = [cross_entropy(lg, t) for lg, t in zip(torch.split(logits, sizes), torch.split(y, sizes))]
        params = network_parameters(self)
        grads = [torch.autograd.grad(r, params, create_graph=True, allow_unused=True) for r in risks]
        grads = [[torch.zeros_like(p) if g is None else g for g, p in zip(gs, params)] for gs in grads]
        penalty = iga_penalty(grads)
        mean_risk = torch.stack(risks).mean()
        loss = mean_risk + self.hparams["penalty"] * penalty
        logs = {"loss_ce": mean_risk.detach(), "penalty_iga": penalty.detach()}
        return loss, logs, {"x": x, "y": y, "features": feats, "logits": logits}
