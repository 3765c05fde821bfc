"""IRM: Invariant Risk Minimization (Arjovsky et al., arXiv 1907.02893), as IRMv1.

The penalty is the squared gradient of each domain's risk with respect to a dummy scale
``w = 1`` multiplying the logits. DomainBed estimates the square without bias as the
product of the gradients on two disjoint halves of the domain's batch (even and odd
samples), which is what :func:`irm_penalty` computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from domainbed.algorithms._support import domain_risks, pool
from domainbed.algorithms.annealing import AnnealedPenalty, int_log_uniform
from domainbed.algorithms.base import LossOutput, Minibatches
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.errors import UserError
from domainbed.lib.hparam import HParam, log_uniform


def irm_penalty(logits: Tensor, y: Tensor) -> Tensor:
    """IRMv1 penalty of one domain: ``∂R_even/∂w · ∂R_odd/∂w`` at ``w = 1``.

    ``R_even`` (``R_odd``) is the mean cross-entropy of ``w · logits`` over the even (odd)
    samples. Differentiable in ``logits`` (the gradients are taken with ``create_graph``).
    Computed in fp32; needs at least 2 samples.
    """
    if logits.dim() != 2 or logits.shape[0] != y.shape[0]:
        raise ValueError(f"irm_penalty expects logits (n, classes) and labels (n,); got {tuple(logits.shape)}, {tuple(y.shape)}")
    if logits.shape[0] < 2:
        raise UserError("irm_penalty needs at least 2 samples per domain (it splits the batch in halves); increase batch_size")
    logits = logits.float()
    scale = torch.ones((), device=logits.device, requires_grad=True)
    grads = []
    for half in (slice(0, None, 2), slice(1, None, 2)):
        risk = F.cross_entropy(logits[half] * scale, y[half])
        grads.append(torch.autograd.grad(risk, scale, create_graph=True)[0])
    return grads[0] * grads[1]


@register_algorithm
class IRM(AnnealedPenalty):
    """Mean per-domain cross-entropy + weight × mean IRMv1 penalty.

    The weight is 1 for the first ``irm_penalty_anneal_iters`` updates and ``irm_lambda``
    afterwards; Adam is reset when it switches.
    """

    EXPOSES_FEATURES = True
    LAMBDA_HPARAM = "irm_lambda"
    ANNEAL_HPARAM = "irm_penalty_anneal_iters"
    HPARAMS = {
        "irm_lambda": HParam(1e2, log_uniform(-1, 5), "weight of the IRM penalty after the anneal iterations"),
        "irm_penalty_anneal_iters": HParam(500, int_log_uniform(0, 4), "updates with penalty weight 1 before irm_lambda applies"),
    }

    def compute_loss(self, minibatches: Minibatches) -> LossOutput:
        x, y, sizes = pool(minibatches)
        feats = self.featurize(x)
        logits = self.classifier(feats.final)
        per_domain = list(zip(torch.split(logits, sizes), torch.split(y, sizes)))
        nll = domain_risks(logits, y, sizes).mean()
        penalty = torch.stack([irm_penalty(l, t) for l, t in per_domain]).mean()
        loss = nll + self.penalty_weight() * penalty
        logs = {"loss_ce": nll.detach(), "penalty_irm": penalty.detach()}
        return loss, logs, {"x": x, "y": y, "features": feats, "logits": logits}
