"""TRM: transfer risk minimisation (Xu & Jaakkola, "Learning representations that support
robust transfer of predictors", arXiv 2110.09940).

After ``iters`` ERM updates, every update also fits one linear head per domain on the
(detached) features, then penalises the transfer risk: how well head Q, fitted on domain Q,
does on the other domains (weighted by GroupDRO-style weights ``alpha``), minus
``cos_lambda`` times the alignment ``H_Q⁻¹ ∇L_P · ∇L_Q`` of the heads' gradients, with the
inverse Hessian-vector product from a truncated Neumann series. It is one optimizer step on
a loss, so TRM writes ``compute_loss``; the heads and ``alpha`` are state in ``state_dict()``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from domainbed.algorithms._support import pool
from domainbed.algorithms.base import Algorithm, LossOutput, Minibatches, cross_entropy
from domainbed.algorithms.counters import UpdateCounter
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.errors import UserError
from domainbed.lib.hparam import HParam, log_uniform

HEAD_LR = 0.1  # SGD learning rate of the per-domain heads (the paper's code)
HEAD_STEPS = 30  # SGD steps on the heads per update
NEUMANN_TERMS = 10
NEUMANN_BOUND = 10.0  # stop adding terms once the estimate leaves [-10, 10] (divergence)


def neumann_inverse_hvp(hvp: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor,
                        terms: int = NEUMANN_TERMS, bound: float = NEUMANN_BOUND) -> torch.Tensor:
    """Approximate ``H⁻¹ v`` by the truncated Neumann series ``Σ_{k=0}^{terms} (I - H)^k v``.

    ``hvp(u)`` returns ``H u``. The series converges when H's eigenvalues lie in (0, 2). Once
    the estimate's largest entry exceeds ``bound`` no further term is added (the series is
    diverging); this is decided on the device, without host synchronisation.
    """
    term = v.detach()
    estimate = term
    stopped = torch.zeros((), dtype=torch.bool, device=v.device)
    for _ in range(terms):
        term = (term - hvp(term)).detach()
        estimate = torch.where(stopped, estimate, estimate + term)
        stopped = stopped | (estimate.abs().max() > bound)
    return estimate


@register_algorithm
class TRM(Algorithm):
    """ERM for ``iters`` updates, then ERM + the transfer-risk term averaged over domains."""

    EXPOSES_FEATURES = True
    HPARAMS = {
        "cos_lambda": HParam(1e-4, log_uniform(-5, 0), "weight of the gradient-alignment term"),
        "iters": HParam(200, lambda r: int(10 ** r.uniform(0, 4)), "ERM updates before the transfer risk"),
        "groupdro_eta": HParam(1e-2, log_uniform(-3, -1), "step size of the exponentiated domain weights alpha"),
    }

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Any):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        if not isinstance(self.classifier, nn.Linear):
            raise UserError("TRM transfers linear heads between domains; set hparam nonlinear_classifier to false")
        d = self.featurizer.n_outputs
        self.heads = nn.ModuleList(nn.Linear(d, num_classes) for _ in range(num_domains))
        self.heads.requires_grad_(False)  # trained by their own SGD steps, not the optimizer
        # alpha[Q, P]: weight of domain P in head Q's transfer risk (no self-transfer).
        self.register_buffer("alpha", torch.ones(num_domains, num_domains) - torch.eye(num_domains))
        self.steps = UpdateCounter()

    def _fit_heads(self, feats: list[torch.Tensor], ys: list[torch.Tensor]) -> None:
        """``HEAD_STEPS`` plain SGD steps of every head on its own domain's fixed features."""
        for _ in range(HEAD_STEPS):
            weights = [p.detach().requires_grad_() for head in self.heads[: len(feats)] for p in (head.weight, head.bias)]
            risk = sum(F.cross_entropy(F.linear(f, weights[2 * j], weights[2 * j + 1]), t)
                       for j, (f, t) in enumerate(zip(feats, ys)))
            grads = torch.autograd.grad(risk, weights)
            with torch.no_grad():
                params = [p for head in self.heads[: len(feats)] for p in (head.weight, head.bias)]
                torch._foreach_add_(params, grads, alpha=-HEAD_LR)

    def transfer_risk(self, feats: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
        """Mean over domains Q of ``Σ_P alpha[Q,P] L_P(head_Q) - cos_lambda · (H_Q⁻¹ ∇L_P) · ∇L_Q``;
        updates ``alpha`` (exponentiated by ``groupdro_eta`` × the weighted risks)."""
        n = len(feats)
        if self.hparams["class_balanced"]:
            # For stability under label imbalance across domains, the heads restart from the classifier.
            for head in self.heads:
                head.weight.copy_(self.classifier.weight.detach())
        self.alpha.div_(self.alpha.sum(dim=1, keepdim=True))
        self._fit_heads([f.detach() for f in feats], ys)
        alpha = self.alpha.clone()  # this update's weights (the buffer changes below)
        total = feats[0].new_zeros(())
        for q in range(n):
            w = self.heads[q].weight.detach().requires_grad_()
            b = self.heads[q].bias.detach()
            grad_q = torch.autograd.grad(F.cross_entropy(F.linear(feats[q], w, b), ys[q]), w, create_graph=True)[0]
            risks_p = [F.cross_entropy(F.linear(feats[p], w, b), ys[p]) * alpha[q, p] for p in range(n) if p != q]
            risk_p = sum(risks_p)
            grad_p = torch.autograd.grad(risk_p, w, retain_graph=True)[0].detach()
            # Hessian of head q's own risk w.r.t. its weight, on fixed features.
            w_fixed = self.heads[q].weight.detach().requires_grad_()
            first = torch.autograd.grad(F.cross_entropy(F.linear(feats[q].detach(), w_fixed, b), ys[q]), w_fixed,
                                        create_graph=True)[0]

            def hvp(u: torch.Tensor) -> torch.Tensor:
                return torch.autograd.grad((first * u).sum(), w_fixed, retain_graph=True)[0]  # noqa: B023 -- used in this iteration only

            direction = neumann_inverse_hvp(hvp, grad_p)
            total = total + risk_p - self.hparams["cos_lambda"] * (direction * grad_q).sum()
            others = [p for p in range(n) if p != q]
            with torch.no_grad():
                for p, r in zip(others, risks_p):
                    self.alpha[q, p] *= torch.exp(self.hparams["groupdro_eta"] * r.detach())
        return total / n

    def compute_loss(self, minibatches: Minibatches) -> LossOutput:
        if len(minibatches) > self.num_domains:
            raise ValueError(f"TRM has one head per training domain: got {len(minibatches)} minibatches "
                             f"for {self.num_domains} domains")
        x, y, sizes = pool(minibatches)
        feats = self.featurize(x)
        logits = self.classifier(feats.final)
        nll = cross_entropy(logits, y)
        trm = nll.new_zeros(())
        if self.steps.value >= self.hparams["iters"]:
            with torch.autocast(x.device.type, enabled=False):  # second-order terms in fp32
                trm = self.transfer_risk(list(torch.split(feats.final.float(), sizes)), list(torch.split(y, sizes)))
        self.steps.increment()
        return nll + trm, {"loss_ce": nll.detach(), "loss_trm": trm.detach()}, {"x": x, "y": y, "features": feats, "logits": logits}
