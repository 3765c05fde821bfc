"""Fishr: match the domains' variances of per-sample classifier gradients (Rame et al.,
arXiv 2109.02934).

The per-sample gradients of the cross-entropy with respect to the classifier's parameters
come from ``torch.func`` (``functional_call`` + ``vmap`` + ``grad``) and stay
differentiable, so the penalty trains the featurizer and the classifier. Each domain's
gradient variance is smoothed by an exponential moving average across updates, as in the
paper; that average and the update counter are buffers (in ``state_dict()``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from domainbed.algorithms._support import pool, restart_optimizer
from domainbed.algorithms.base import Algorithm, LossOutput, Minibatches, cross_entropy
from domainbed.algorithms.counters import UpdateCounter
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.hparam import HParam, log_uniform, uniform


def per_sample_classifier_grads(classifier: nn.Module, features: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradients of each sample's cross-entropy w.r.t. the classifier's parameters.

    Returns shape ``(n_samples, n_params)``: the parameters flattened and concatenated in
    ``named_parameters`` order. Computed in fp32 with autocast off; differentiable w.r.t.
    ``features`` and the parameters.
    """
    params = dict(classifier.named_parameters())

    def sample_loss(p: dict[str, torch.Tensor], f: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(classifier, p, (f.unsqueeze(0),)), t.unsqueeze(0))

    with torch.autocast(features.device.type, enabled=False):
        grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, features.float(), y)
    n = features.shape[0]
    return torch.cat([grads[name].reshape(n, -1) for name in params], dim=1)


def domain_gradient_variances(grads: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Per-domain (biased) variance over samples of each gradient component: ``(n_domains, n_params)``."""
    return torch.stack([g.var(dim=0, unbiased=False) for g in torch.split(grads, sizes)])


def fishr_penalty(variances: torch.Tensor) -> torch.Tensor:
    """Mean over domains of the mean squared distance between each domain's gradient
    variance and their mean over domains. ``variances``: ``(n_domains, n_params)``."""
    return (variances - variances.mean(dim=0, keepdim=True)).pow(2).mean()


def ema_with_correction(previous: torch.Tensor, current: torch.Tensor, ema: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the exponential moving average ``ema · previous + (1 - ema) · current``.

    Returns ``(average / (1 - ema), average.detach())``: the first is what the penalty uses
    (divided by ``1 - ema`` so the gradient through ``current`` does not shrink with
    ``ema``, as in the paper's code), the second the state to keep (``previous`` starts at 0).
    """
    average = ema * previous + (1.0 - ema) * current
    return average / (1.0 - ema), average.detach()


@register_algorithm
class Fishr(Algorithm):
    """Pooled cross-entropy + ``lambda`` × :func:`fishr_penalty` of the moving-averaged
    per-domain variances (weight 0 for ``penalty_anneal_iters`` updates; Adam restarts then)."""

    EXPOSES_FEATURES = True
    HPARAMS = {
        "lambda": HParam(1000.0, log_uniform(1.0, 4.0), "weight of the gradient-variance penalty after annealing"),
        "penalty_anneal_iters": HParam(1500, lambda r: int(r.uniform(0.0, 5000.0)), "updates with penalty weight 0"),
        "ema": HParam(0.95, uniform(0.90, 0.99), "moving-average factor of the gradient variances"),
    }

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Any):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.steps = UpdateCounter()
        n_params = sum(p.numel() for p in self.classifier.parameters())
        self.register_buffer("variance_ema", torch.zeros(num_domains, n_params))

    def compute_loss(self, minibatches: Minibatches) -> LossOutput:
        if len(minibatches) != self.num_domains:
            raise ValueError(f"Fishr keeps one moving average per training domain: got {len(minibatches)} minibatches "
                             f"for {self.num_domains} domains")
        x, y, sizes = pool(minibatches)
        feats = self.featurize(x)
        logits = self.classifier(feats.final)
        nll = cross_entropy(logits, y)
        grads = per_sample_classifier_grads(self.classifier, feats.final, y)
        smoothed, state = ema_with_correction(self.variance_ema, domain_gradient_variances(grads, sizes),
                                              float(self.hparams["ema"]))
        self.variance_ema.copy_(state)
        penalty = fishr_penalty(smoothed)
        step, anneal = self.steps.value, int(self.hparams["penalty_anneal_iters"])
        weight = 0.0
        if step >= anneal:
            weight = float(self.hparams["lambda"])
            if step == anneal != 0:
                restart_optimizer(self)
        self.steps.increment()
        loss = nll + weight * penalty
        logs = {"loss_ce": nll.detach(), "penalty_fishr": penalty.detach()}
        return loss, logs, {"x": x, "y": y, "features": feats, "logits": logits}
