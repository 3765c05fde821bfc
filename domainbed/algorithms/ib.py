"""IB_ERM and IB_IRM: an information bottleneck on the features (Ahuja et al., "Invariance
principle meets information bottleneck", arXiv 2106.06607), alone or with IRM's penalty
(Arjovsky et al., arXiv 1907.02893).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from domainbed.algorithms._support import domain_risks, pool, restart_optimizer
from domainbed.algorithms.base import Algorithm, LossOutput, Minibatches
from domainbed.algorithms.counters import UpdateCounter
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.hparam import HParam, log_uniform


def ib_penalty(features: torch.Tensor) -> torch.Tensor:
    """Mean over feature dimensions of the (unbiased) variance over the batch, in fp32."""
    return features.float().var(dim=0).mean()


def irm_penalty(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """IRMv1's penalty on one domain, with DomainBed's unbiased estimate.

    ``g_a · g_b`` where ``g_a``, ``g_b`` are the derivatives, at scale 1, of the
    cross-entropy of ``scale × logits`` on the even- and the odd-indexed samples. The
    product of two independent halves estimates the squared gradient norm without bias.
    """
    scale = torch.ones((), device=logits.device, requires_grad=True)
    logits = logits.float()
    loss_a = F.cross_entropy(logits[::2] * scale, y[::2])
    loss_b = F.cross_entropy(logits[1::2] * scale, y[1::2])
    grad_a = torch.autograd.grad(loss_a, scale, create_graph=True)[0]
    grad_b = torch.autograd.grad(loss_b, scale, create_graph=True)[0]
    return grad_a * grad_b


ANNEAL_HPARAMS = {
    "ib_lambda": HParam(1e2, log_uniform(-1, 5), "weight of the feature-variance penalty after annealing"),
    "ib_penalty_anneal_iters": HParam(500, lambda r: int(10 ** r.uniform(0, 4)), "updates with ib weight 0"),
}


@register_algorithm
class IB_ERM(Algorithm):
    """Mean domain cross-entropy + ``ib_lambda`` × mean per-domain :func:`ib_penalty`
    (weight 0 for the first ``ib_penalty_anneal_iters`` updates; Adam restarts then)."""

    EXPOSES_FEATURES = True
    HPARAMS = dict(ANNEAL_HPARAMS)

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Any):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.steps = UpdateCounter()  # the annealing counter, in state_dict()

    def restart_steps(self) -> tuple[int, ...]:
        """Update counts at which Adam restarts (where a penalty weight jumps)."""
        return (int(self.hparams["ib_penalty_anneal_iters"]),)

    def penalties(self, step: int, logits: list[torch.Tensor], ys: list[torch.Tensor], feats: list[torch.Tensor]
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted penalty sum and the unweighted per-domain means, for logging."""
        ib = torch.stack([ib_penalty(f) for f in feats]).mean()
        weight = self.hparams["ib_lambda"] if step >= self.hparams["ib_penalty_anneal_iters"] else 0.0
        return weight * ib, {"penalty_ib": ib.detach()}

    def compute_loss(self, minibatches: Minibatches) -> LossOutput:
        x, y, sizes = pool(minibatches)
        feats = self.featurize(x)
        logits = self.classifier(feats.final)
        step = self.steps.value
        per_logits, per_y = torch.split(logits, sizes), torch.split(y, sizes)
        nll = domain_risks(logits, y, sizes).mean()
        penalty, logs = self.penalties(step, list(per_logits), list(per_y), list(torch.split(feats.final, sizes)))
        if step in self.restart_steps():
            restart_optimizer(self)
        self.steps.increment()
        logs["loss_ce"] = nll.detach()
        return nll + penalty, logs, {"x": x, "y": y, "features": feats, "logits": logits}


@register_algorithm
class IB_IRM(IB_ERM):
    """IB_ERM plus IRMv1's penalty: weight 1 for ``irm_penalty_anneal_iters`` updates, then
    ``irm_lambda``; Adam restarts when either weight jumps."""

    HPARAMS = {
        "irm_lambda": HParam(1e2, log_uniform(-1, 5), "weight of the IRM penalty after annealing"),
        "irm_penalty_anneal_iters": HParam(500, lambda r: int(10 ** r.uniform(0, 4)), "updates with IRM weight 1"),
        **ANNEAL_HPARAMS,
    }

    def restart_steps(self) -> tuple[int, ...]:
        return (int(self.hparams["irm_penalty_anneal_iters"]), int(self.hparams["ib_penalty_anneal_iters"]))

    def penalties(self, step, logits, ys, feats):
        ib_term, logs = super().penalties(step, logits, ys, feats)
        irm = torch.stack([irm_penalty(lg, t) for lg, t in zip(logits, ys)]).mean()
        weight = self.hparams["irm_lambda"] if step >= self.hparams["irm_penalty_anneal_iters"] else 1.0
        logs["penalty_irm"] = irm.detach()
        return ib_term + weight * irm, logs
