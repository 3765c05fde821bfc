"""Transfer (Zhang et al., "Quantifying and Improving Transferability in Domain
Generalization", arXiv 2106.03632, Algorithm 1).

Features transfer between domains when no classifier close to the trained one can be good
on one training domain and bad on another. An adversarial classifier ``h'`` kept in the
ball ``‖h' − h‖ ≤ delta`` (Frobenius norm over all its parameters) maximises the gap
``max_d R_d(h' ∘ f) − min_d R_d(h' ∘ f)`` between the domain risks; the featurizer ``f``
minimises it. Each update, as DomainBed runs it:

1. featurizer + classifier: one step on the pooled cross-entropy;
2. featurizer: one step on ``t_lambda · gap(h')`` (the per-domain risks computed domain by
   domain, on the updated featurizer);
3. ``h' ← h``, then ``d_steps_per_g`` steps of gradient *ascent* on ``t_lambda · gap(h')``
   with plain SGD at ``lr_d``, each followed by the projection onto the ball around ``h``.

``h'`` is a submodule, so a checkpoint carries it; its SGD has no state.

Deliberate differences from DomainBed's code (the README's algorithm table names the first):

* ``gda = true`` (what DomainBed's random search always draws) trains featurizer and
  classifier with plain SGD at ``lr``, the gradient descent-ascent the paper describes.
  DomainBed's code gives that SGD the adversarial classifier's parameters instead, so in
  its random-search runs the featurizer and classifier never move.
* In step 3 the features are computed once (the featurizer does not change while the
  adversary ascends) instead of at each ascent step; only dropout draws and BatchNorm's
  running statistics could differ, and the cost drops from ``d_steps_per_g`` featurizer
  forward and backward passes per domain to one forward.

``weight_decay_d`` and ``beta1`` are in DomainBed's registry for Transfer but unused by its
algorithm; they are declared (so random draws match) and unused here too.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from domainbed.algorithms._support import pool
from domainbed.algorithms.base import Algorithm, Minibatches, cross_entropy
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.hparam import HParam, choice, log_uniform, uniform


def risk_gap(risks: Tensor) -> Tensor:
    """``max_d risks_d − min_d risks_d`` for a 1-D tensor of per-domain risks."""
    if risks.dim() != 1 or len(risks) == 0:
        raise ValueError(f"risk_gap expects a 1-D tensor of per-domain risks; got shape {tuple(risks.shape)}")
    return risks.max() - risks.min()


def parameter_distance(a: nn.Module, b: nn.Module) -> Tensor:
    """Frobenius distance between two modules of the same architecture, over all parameters."""
    return torch.sqrt(sum((pa.detach().float() - pb.detach().float()).pow(2).sum()
                          for pa, pb in zip(a.parameters(), b.parameters())))  # type: ignore[arg-type]


@torch.no_grad()
def project_to_ball(module: nn.Module, center: nn.Module, radius: float) -> Tensor:
    """Move ``module``'s parameters onto the ball of ``radius`` around ``center``'s (the
    Euclidean projection: ``c + radius · (m − c) / ‖m − c‖`` when outside, unchanged
    inside). Returns the distance before the projection. No host synchronisation."""
    dist = parameter_distance(module, center)
    outside = dist > radius
    scale = radius / dist.clamp_min(torch.finfo(dist.dtype).tiny)
    for pm, pc in zip(module.parameters(), center.parameters()):
        pm.copy_(torch.where(outside, pc + scale.to(pc.dtype) * (pm - pc), pm))
    return dist


@register_algorithm
class Transfer(Algorithm):
    """ERM + a featurizer that closes the risk gap of an adversarial nearby classifier."""

    # Several steps per update, from several forward passes: no FT-LP variant.
    EXPOSES_FEATURES = False
    SUPPORTED_OPTIMIZERS = ("adam",)
    HPARAMS = {
        "t_lambda": HParam(1.0, log_uniform(-2, 1), "weight of the risk gap"),
        "delta": HParam(2.0, uniform(0.1, 3.0), "radius of the ball around the classifier that the adversary stays in"),
        "d_steps_per_g": HParam(10, choice(1, 2, 5), "ascent steps of the adversarial classifier per update"),
        "weight_decay_d": HParam(0.0, log_uniform(-6, -2), "declared by DomainBed's registry, unused by Transfer"),
        "gda": HParam(False, lambda r: True, "plain SGD (gradient descent-ascent) instead of Adam for the featurizer "
                      "and classifier", choices=(False, True)),
        "beta1": HParam(0.5, choice(0.0, 0.5), "declared by DomainBed's registry, unused by Transfer"),
        "lr_d": HParam(1e-3, log_uniform(-4.5, -2.5), "SGD learning rate of the adversarial classifier's ascent"),
    }

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Mapping[str, Any]):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        import copy

        self.adv_classifier = copy.deepcopy(self.classifier)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        if bool(self.hparams["gda"]):
            return torch.optim.SGD(self.param_groups(), lr=float(self.hparams["lr"]))
        return super().configure_optimizer()

    def _domain_risks(self, head: nn.Module, features: Sequence[Tensor], minibatches: Minibatches) -> Tensor:
        return torch.stack([F.cross_entropy(head(f).float(), y) for f, (_, y) in zip(features, minibatches)])

    def _step(self, loss: Tensor, inputs: list[nn.Parameter] | None = None) -> None:
        assert self.optimizer is not None and self.scaler is not None
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward(inputs=inputs)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def update(self, minibatches: Minibatches, unlabeled: list[Tensor] | None = None) -> dict[str, Tensor]:
        minibatches = self.begin_update(minibatches)
        h = self.hparams
        lam, lr_d, radius = float(h["t_lambda"]), float(h["lr_d"]), float(h["delta"])
        x, y, _ = pool(minibatches)
        with self.autocast():
            ce = cross_entropy(self.predict(x), y)
        self._step(ce)

        featurizer_params = [p for p in self.featurizer.parameters() if p.requires_grad]
        with self.autocast():
            risks = self._domain_risks(self.adv_classifier, [self.featurize(xd).final for xd, _ in minibatches], minibatches)
            gap = lam * risk_gap(risks)
        # The adversary's parameters are moved only by its own ascent below.
        self._step(gap, inputs=featurizer_params)

        self.adv_classifier.load_state_dict(self.classifier.state_dict())
        with torch.no_grad(), self.autocast():
            features = [self.featurize(xd).final.float() for xd, _ in minibatches]
        adv_params = list(self.adv_classifier.parameters())
        adv_gap = gap.detach()
        for _ in range(int(h["d_steps_per_g"])):
            with torch.enable_grad():
                adv_gap = lam * risk_gap(self._domain_risks(self.adv_classifier, features, minibatches))
                grads = torch.autograd.grad(adv_gap, adv_params)
            with torch.no_grad():
                for p, g in zip(adv_params, grads):
                    p.add_(g, alpha=lr_d)  # ascent
            project_to_ball(self.adv_classifier, self.classifier, radius)
        return {"loss": ce.detach().float(), "gap": gap.detach().float(), "gap_adv": adv_gap.detach().float()}
