"""The FT-LP mixin (arXiv 2406.05628): the prior's KL added to any base algorithm's loss.

:class:`FTLP` keeps a frozen copy ``f_0`` of the pre-trained featurizer as the prior and, at
every optimizer step, adds ``λ · Σ_l mean KL(P_l ‖ Q_l)`` between the fine-tuned model's
feature distribution and the prior's, on the features the base algorithm already computed.
The derivation, the sampled and point posteriors, and why the prior normalises a batch as the
trained network does: docs/ftlp.md. The variant of base ``X`` is ``class X_FTLP(FTLP, X)``
(``variants.py``); the prior module is in ``prior.py``, the hparams in ``config.py``.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import torch
from torch import nn

from domainbed.algorithms.base import LossOutput, Minibatches
from domainbed.algorithms.ftlp.config import FTLP_HPARAMS, FTLPConfig
from domainbed.algorithms.ftlp.diagnostics import liveness_report
from domainbed.algorithms.ftlp.prior import NoiseInjector, PriorKL, frozen_prior, sync_batchnorm_mode
from domainbed.lib.seeding import seed_hash
from domainbed.networks import Features


class FTLP:
    """Mixin adding the FT-LP prior to any base algorithm whose ``compute_loss`` returns
    ``extras["x"]`` and ``extras["features"]`` (those that declare ``EXPOSES_FEATURES``).
    Put it first: ``class ERM_FTLP(FTLP, ERM)``."""

    HPARAMS = FTLP_HPARAMS

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Mapping[str, Any]):
        super().__init__(input_shape, num_classes, num_domains, hparams)  # type: ignore[call-arg]
        self.ftlp_cfg = self.ftlp_config()
        # The prior: a frozen copy with the same pretrained weights. It is kept out of the
        # module tree on purpose: not in parameters(), state_dict(), optimizers or SWAD.
        object.__setattr__(self, "_prior_net", frozen_prior(self.featurizer))
        self.want_intermediates = self.ftlp_cfg.uses_stages
        names, channels = self._layers()
        self.ftlp_layer_names = names
        self.prior_kl = PriorKL(channels, self.ftlp_cfg)
        # Noise at stage outputs is injected by forward hooks, so later stages read the sample.
        stage_noise = self.ftlp_cfg.posterior == "sample" and self.ftlp_cfg.uses_stages
        object.__setattr__(self, "_noise", NoiseInjector(self.featurizer, self.prior_kl, stage_noise, self.input_shape))
        # A private generator for the posterior's noise and the control's shuffles, seeded per
        # step: the global RNG stream stays the base algorithm's (paired runs stay paired).
        self.register_buffer("noise_seed", torch.tensor(torch.initial_seed() % 2**31, dtype=torch.long))
        self.register_buffer("noise_step", torch.zeros((), dtype=torch.long))
        self._generator: torch.Generator | None = None

    def ftlp_config(self) -> FTLPConfig:
        return FTLPConfig.from_hparams(self.hparams)

    @property
    def prior_network(self) -> nn.Module:
        return self._prior_net

    def _layers(self) -> tuple[list[str], list[int]]:
        """Names and channel counts of the regularised layers (stages first, then final)."""
        with torch.no_grad():
            probe = self._prior_net.forward_features(torch.zeros(2, *self.input_shape), intermediates=self.ftlp_cfg.uses_stages)
        names: list[str] = []
        channels: list[int] = []
        if self.ftlp_cfg.uses_stages:
            names += [f"stage{i}" for i in range(len(probe.intermediates))]
            channels += [t.shape[1] for t in probe.intermediates]
        if self.ftlp_cfg.uses_final:
            names.append("final")
            channels.append(probe.final.shape[1])
        return names, channels

    def _apply(self, fn, recurse: bool = True):  # .to(), .cuda(), memory formats reach the prior too
        step, seed = self.noise_step, self.noise_seed
        super()._apply(fn, recurse)
        self._prior_net._apply(fn)
        # The noise counters stay on the CPU: read every step without a device synchronisation.
        self.noise_step, self.noise_seed = step.cpu(), seed.cpu()
        return self

    def setup(self, device=None):
        super().setup(device)
        if self._amp_dtype is not None:
            # The prior never trains: hold it in the autocast dtype (half the memory and bandwidth).
            self._prior_net.to(dtype=self._amp_dtype)
        if self.hparams.get("compile", False):
            self._prior_net.trunk.compile()
        return self

    def param_groups(self) -> list[dict[str, Any]]:
        groups = super().param_groups()
        extra = list(self.prior_kl.parameters())
        if extra:
            groups.append({"params": extra, "lr": self.hparams["lr"] * self.ftlp_cfg.encoder_lr_mult})
        return groups

    # ------------------------------------------------------------------ noise
    def _step_generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
        # A pure function of (seed, step): a resumed run draws the same noise.
        self._generator.manual_seed(seed_hash(int(self.noise_seed), int(self.noise_step)))
        return self._generator

    # ------------------------------------------------------------------ model
    def featurize(self, x: torch.Tensor) -> Features:
        """Features whose ``final`` is what the classifier reads (the sample in training with
        the stochastic posterior), ``mean`` the posterior mean at the final layer, and
        ``intermediates`` the posterior means at the stage outputs."""
        noisy = self.training and self.ftlp_cfg.posterior == "sample"
        if not noisy:
            f = super().featurize(x)
            return Features(f.final, f.intermediates, mean=f.final)
        gen = self._step_generator(x.device)
        with self._noise.active(gen):
            f = super().featurize(x)
            stage_means = self._noise.means()
        inter = stage_means if self._noise.enabled else f.intermediates
        z = f.final
        if self.ftlp_cfg.uses_final:
            std = self.prior_kl.std_p(len(self.prior_kl) - 1, z)
            z = z + std * torch.randn(z.shape, generator=gen, device=z.device, dtype=torch.float32).to(z.dtype)
        return Features(z, tuple(inter), mean=f.final)

    def compute_loss(self, minibatches: Minibatches) -> LossOutput:
        if self.training and not bool(self.prior_kl.calibrated):
            self.calibrate(torch.cat([x for x, _ in minibatches]))
        loss, logs, extras = super().compute_loss(minibatches)  # type: ignore[misc]
        if "x" not in extras or "features" not in extras:
            raise TypeError(f"{type(self).__name__}: the base algorithm must return extras['x'] and extras['features']")
        kl = self.prior_divergence(extras["x"], extras["features"])
        logs["ftlp_kl"] = kl.detach()
        if self.training:
            self.noise_step += 1
        return loss + self.ftlp_cfg.lam * kl, logs, extras

    def calibrate(self, x: torch.Tensor) -> None:
        """Once, before the first step: report dead prior channels per layer and, with
        ``ftlp_prior_var = calibrated``, fix σ²_Q from the prior's features of ``x``."""
        feats = self._prior_layers(self.prior_features(x))
        report, dead = liveness_report(self.ftlp_layer_names, feats)
        print(f"FT-LP prior, dead channels per regularised layer ({len(x)} source images):\n{report}", flush=True)
        if dead:
            warnings.warn(
                f"FT-LP: the prior is mostly dead at {', '.join(dead)}: those channels are constant over the "
                "batch, so the prior term there carries no information about the image. Fix: let BatchNorm use "
                "batch statistics (hparam freeze_bn false), raise image_size, or regularise other layers "
                "(hparam ftlp_layers).", RuntimeWarning, stacklevel=2)
        self.prior_kl.calibrate(feats)

    def prior_features(self, x: torch.Tensor) -> Features:
        """The frozen prior's features of ``x``, as plain fp32 tensors without autograd.
        Its BatchNorm layers follow the trained network's mode (batch or running statistics)."""
        sync_batchnorm_mode(self.featurizer, self._prior_net)
        with torch.inference_mode():  # the prior keeps no activations
            p = self._prior_net.forward_features(x, intermediates=self.ftlp_cfg.uses_stages)
        # Inference tensors cannot be saved for backward: one fp32 copy each (feature-sized).
        def copy(t: torch.Tensor) -> torch.Tensor:
            return t.to(torch.float32, copy=True)

        return Features(copy(p.final), tuple(copy(t) for t in p.intermediates))

    def _prior_layers(self, p: Features) -> list[torch.Tensor]:
        return (list(p.intermediates) if self.ftlp_cfg.uses_stages else []) + ([p.final] if self.ftlp_cfg.uses_final else [])

    def prior_divergence(self, x: torch.Tensor, feats: Features) -> torch.Tensor:
        """Σ_l mean KL(P_l ‖ Q_l) on the features the base algorithm already computed."""
        cfg = self.ftlp_cfg
        prior = self._prior_layers(self.prior_features(x))
        if cfg.control == "shuffled":
            # Control: the prior's features of other images of the batch (same statistics,
            # no per-image information), so a gain can be told from generic regularisation.
            gen = self._step_generator(prior[0].device)
            perm = torch.randperm(len(x), generator=gen, device=prior[0].device)
            prior = [p[perm] for p in prior]
        posterior = (list(feats.intermediates) if cfg.uses_stages else []) + (
            [feats.mean if feats.mean is not None else feats.final] if cfg.uses_final else [])
        return self.prior_kl(posterior, prior)
