"""SagNet: style-agnostic networks (Nam et al., arXiv 1910.11645, Algorithm 1), in DomainBed's
form: the "style" of a sample is the mean and variance of its pooled feature vector.

Three optimizer steps per update:

1. content: featurizer + classifier on features whose style is interpolated towards
   another sample's (:func:`randomize_style`);
2. style: a second classifier on features whose content is swapped with another sample's
   (:func:`randomize_content`), so it can only use style;
3. adversarial: the featurizer alone, to make the style classifier's prediction uniform
   (``-sag_w_adv · mean log-softmax``).

One Adam optimizer holds the three networks; Adam's state is per parameter, so stepping
only the parameters with gradients is the same as three optimizers, and the one
``optimizer.state_dict()`` saves all of it for a resume.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from domainbed.algorithms.base import Algorithm, Minibatches, cross_entropy
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.hparam import HParam, log_uniform
from domainbed.networks import build_classifier

EPS = 1e-5


def _stats(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    # fp32 (fp64 stays fp64): a variance over bf16 features loses most of its digits.
    if x.dim() != 2:
        raise ValueError(f"SagNet randomises pooled features of shape (n, d); got shape {tuple(x.shape)}")
    x = x if x.dtype == torch.float64 else x.float()
    # Per-sample mean and unbiased variance over the feature dimension.
    return x, x.mean(-1, keepdim=True), x.var(-1, keepdim=True)


def randomize_style(x: Tensor, alpha: Tensor, perm: Tensor, eps: float = EPS) -> Tensor:
    """Normalise each row of ``x`` ``(n, d)`` and re-style it with the mean and variance
    ``α_i · stat_i + (1 - α_i) · stat_perm(i)`` (``alpha``: ``(n, 1)``)."""
    x, mean, var = _stats(x)
    alpha = alpha.to(x.dtype)
    normed = (x - mean) / (var + eps).sqrt()
    mean = alpha * mean + (1 - alpha) * mean[perm]
    var = alpha * var + (1 - alpha) * var[perm]
    return normed * (var + eps).sqrt() + mean


def randomize_content(x: Tensor, perm: Tensor, eps: float = EPS) -> Tensor:
    """Row ``i`` gets the normalised content of row ``perm(i)`` (no gradient flows to it)
    with its own mean and variance."""
    x, mean, var = _stats(x)
    normed = ((x - mean) / (var + eps).sqrt())[perm].detach()
    return normed * (var + eps).sqrt() + mean


@register_algorithm
class SagNet(Algorithm):
    """Content classifier trained on style-randomised features; see the module docstring."""

    HPARAMS = {"sag_w_adv": HParam(0.1, log_uniform(-2, 1), "weight of the adversarial (style-confusion) loss")}

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Mapping[str, Any]):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.style_classifier = build_classifier(
            self.featurizer.n_outputs, num_classes, bool(self.hparams.get("nonlinear_classifier", False))
        )

    def param_groups(self) -> list[dict[str, Any]]:
        return super().param_groups() + [{"params": list(self.style_classifier.parameters())}]

    def _featurizer_params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.featurizer.parameters() if p.requires_grad]

    def _random_mixing(self, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        return torch.rand(n, 1, device=device), torch.randperm(n, device=device)

    def _step(self, loss: Tensor, params: list[torch.nn.Parameter]) -> None:
        # Only ``params`` receive gradients, so only they move.
        assert self.optimizer is not None and self.scaler is not None
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward(inputs=params)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def update(self, minibatches: Minibatches, unlabeled: list[Tensor] | None = None) -> dict[str, Tensor]:
        """The three steps; logs ``loss`` (the content classifier's cross-entropy, the task
        loss), ``loss_style`` and ``loss_adv``."""
        if self.optimizer is None:
            self.setup()
        x = torch.cat([self.prepare_input(xb) for xb, _ in minibatches])
        y = torch.cat([yb for _, yb in minibatches]).to(self.device, non_blocking=True)
        self.train()
        f_params = self._featurizer_params()
        c_params = list(self.classifier.parameters())
        s_params = list(self.style_classifier.parameters())

        with self.autocast():
            f = self.featurize(x).final
            alpha, perm = self._random_mixing(len(f), f.device)
            loss_c = cross_entropy(self.classifier(randomize_style(f, alpha, perm)), y)
        self._step(loss_c, f_params + c_params)

        with self.autocast():
            f = self.featurize(x).final
            _, perm = self._random_mixing(len(f), f.device)
            loss_s = cross_entropy(self.style_classifier(randomize_content(f, perm)), y)
        self._step(loss_s, s_params)

        with self.autocast():
            f = self.featurize(x).final
            _, perm = self._random_mixing(len(f), f.device)
            logits = self.style_classifier(randomize_content(f, perm)).float()
            loss_adv = -float(self.hparams["sag_w_adv"]) * F.log_softmax(logits, dim=1).mean(1).mean()
        self._step(loss_adv, f_params)

        return {"loss": loss_c.detach().float(), "loss_style": loss_s.detach().float(), "loss_adv": loss_adv.detach().float()}
