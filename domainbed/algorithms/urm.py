"""URM: Uniform Risk Minimization (Krishnamachari et al., "Uniformly Distributed Feature
Representations for Fair and Robust Learning", TMLR 2024, OpenReview PgLbS5yp8n).

The features are pushed towards a uniform distribution on a box, adversarially: a small
discriminator learns to tell uniform noise on the box (label 1) from the features (label 0),
and the encoder learns to make its features pass for noise. The featurizer's output goes
through a bounded activation (``urm_generator_output``: tanh, box ``[-1, 1)``; relu or
sigmoid, box ``[0, 1)``) that fixes the box. Each update, as in DomainBed:

1. featurizer + classifier: ``CE + urm_adv_lambda · BCE(D(f), 1)``;
2. discriminator, on the same features (detached) and fresh noise ``u``:
   ``BCE(D(u), 1) + urm_adv_lambda · BCE(D(f), 0)``, with targets drawn from
   ``U[1 - s, 1]`` and ``U[0, s]`` instead when ``urm_discriminator_label_smoothing = s > 0``.

One Adam holds both parameter groups (the discriminator's at ``urm_discriminator_lr``, both
with ``weight_decay``); each step gives gradients to one group only, which is the same as
DomainBed's two Adams, and the one ``optimizer.state_dict()`` saves both for a resume.

The activation sits inside the featurizer (after its dropout, where DomainBed's featurizers
apply it), so every path that uses the featurizer sees it: prediction, the saved
stand-alone predictor, and FT-LP's frozen prior copy (``URM_FTLP``). DomainBed's optional
SGD discriminator optimizer (never drawn by its random search) is not offered.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from domainbed.algorithms._support import pool
from domainbed.algorithms.base import Algorithm, LossOutput, Minibatches, cross_entropy
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.hparam import HParam, PerFamily, choice, log_uniform, uniform

# The box each bounded activation maps into: uniform noise on it is the target distribution.
NOISE_BOX = {"tanh": (-1.0, 1.0), "relu": (0.0, 1.0), "sigmoid": (0.0, 1.0)}
ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}
HIDDEN = 100  # the discriminator's width (DomainBed's)


def uniform_noise_like(feats: Tensor, activation: str) -> Tensor:
    """Noise of ``feats``' shape, dtype and device, uniform on the box of ``activation``."""
    lo, hi = NOISE_BOX[activation]
    return (torch.rand(feats.shape, device=feats.device) * (hi - lo) + lo).to(feats.dtype)


def _targets(logits: Tensor, lo: float, hi: float) -> Tensor:
    if lo == hi:
        return torch.full_like(logits, lo, dtype=torch.float32)
    return torch.rand(logits.shape, device=logits.device) * (hi - lo) + lo


def urm_generator_loss(feat_logits: Tensor) -> Tensor:
    """``BCE(D(f), 1)``: the encoder wants its features classified as uniform noise.
    ``feat_logits`` are the discriminator's logits ``(n,)`` or ``(n, 1)``; fp32 result."""
    logits = feat_logits.float().reshape(-1)
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def urm_discriminator_loss(noise_logits: Tensor, feat_logits: Tensor, feat_weight: float,
                           smoothing: float = 0.0) -> Tensor:
    """``BCE(D(u), 1) + feat_weight · BCE(D(f), 0)``; with ``smoothing = s > 0`` the targets
    are drawn per sample from ``U[1 - s, 1]`` (noise) and ``U[0, s]`` (features)."""
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"label smoothing must be in [0, 1]; got {smoothing}")
    noise = noise_logits.float().reshape(-1)
    feats = feat_logits.float().reshape(-1)
    real = _targets(noise, 1.0 - smoothing, 1.0)
    fake = _targets(feats, 0.0, smoothing)
    return (F.binary_cross_entropy_with_logits(noise, real)
            + feat_weight * F.binary_cross_entropy_with_logits(feats, fake))


def urm_discriminator(n_inputs: int, hidden_layers: int) -> nn.Sequential:
    """``Linear(n, 100)``, LeakyReLU, ``hidden_layers`` × (``Linear(100, 100)``, LeakyReLU), ``Linear(100, 1)``."""
    layers: list[nn.Module] = [nn.Linear(n_inputs, HIDDEN), nn.LeakyReLU()]
    for _ in range(hidden_layers):
        layers += [nn.Linear(HIDDEN, HIDDEN), nn.LeakyReLU()]
    layers.append(nn.Linear(HIDDEN, 1))
    return nn.Sequential(*layers)


@register_algorithm
class URM(Algorithm):
    """Cross-entropy + adversarial uniformity of the features; see the module docstring."""

    EXPOSES_FEATURES = True
    # The discriminator's group needs Adam (the one optimizer holds both groups).
    SUPPORTED_OPTIMIZERS = ("adam",)
    HPARAMS = {
        "urm": HParam("adversarial", choice("adversarial"), "how uniformity is enforced (DomainBed: adversarial only)",
                      choices=("adversarial",)),
        "urm_adv_lambda": HParam(0.1, uniform(0, 0.2), "weight of the adversarial terms (encoder and discriminator)"),
        "urm_discriminator_label_smoothing": HParam(0, uniform(0, 0), "s: discriminator targets U[1-s,1] and U[0,s]"),
        "urm_discriminator_optimizer": HParam("adam", choice("adam"), "discriminator optimizer", choices=("adam",)),
        "urm_discriminator_hidden_layers": HParam(1, choice(1, 2, 3), "hidden 100-unit layers of the discriminator"),
        "urm_generator_output": HParam("tanh", choice("tanh", "relu"), "bounded activation of the features",
                                       choices=tuple(NOISE_BOX)),
        "urm_discriminator_lr": PerFamily(
            small=HParam(1e-3, log_uniform(-5.5, -3.5), "discriminator learning rate"),
            image=HParam(5e-5, log_uniform(-6, -4.5), "discriminator learning rate"),
        ),
    }

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Mapping[str, Any]):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        h = self.hparams
        self.activation = str(h["urm_generator_output"])
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"urm_generator_output must be one of {', '.join(ACTIVATIONS)}; got {self.activation!r}")
        # The featurizer applies its ``dropout`` module to the pooled features on every path:
        # the activation placed after it bounds every feature the featurizer returns.
        self.featurizer.dropout = nn.Sequential(self.featurizer.dropout, ACTIVATIONS[self.activation]())
        self.discriminator = urm_discriminator(self.featurizer.n_outputs, int(h["urm_discriminator_hidden_layers"]))

    def param_groups(self) -> list[dict[str, Any]]:
        return super().param_groups() + [
            {"params": list(self.discriminator.parameters()), "lr": float(self.hparams["urm_discriminator_lr"])}
        ]

    def compute_loss(self, minibatches: Minibatches) -> LossOutput:
        x, y, _ = pool(minibatches)
        feats = self.featurize(x)
        logits = self.classifier(feats.final)
        ce = cross_entropy(logits, y)
        adv = urm_generator_loss(self.discriminator(feats.final))
        loss = ce + float(self.hparams["urm_adv_lambda"]) * adv
        return loss, {"loss_ce": ce.detach(), "loss_adv": adv.detach()}, {"x": x, "y": y, "features": feats, "logits": logits}

    def _step(self, loss: Tensor, drop: list[nn.Parameter]) -> None:
        assert self.optimizer is not None and self.scaler is not None
        self.scaler.scale(loss).backward()
        for p in drop:  # this step does not move these
            p.grad = None
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def update(self, minibatches: Minibatches, unlabeled: list[Tensor] | None = None) -> dict[str, Tensor]:
        minibatches = self.begin_update(minibatches)
        assert self.optimizer is not None
        h = self.hparams
        disc_params = list(self.discriminator.parameters())
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss, logs, extras = self.compute_loss(minibatches)
        self._step(loss, drop=disc_params)

        # The discriminator's step: detached features and noise, so only it gets gradients.
        feats = extras["features"].final.detach()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            noise = uniform_noise_like(feats, self.activation)
            d_loss = urm_discriminator_loss(self.discriminator(noise), self.discriminator(feats),
                                            float(h["urm_adv_lambda"]), float(h["urm_discriminator_label_smoothing"]))
        self._step(d_loss, drop=[])
        out = {"loss": loss.detach().float(), "loss_disc": d_loss.detach().float()}
        out.update({k: v.detach().float() for k, v in logs.items()})
        return out
