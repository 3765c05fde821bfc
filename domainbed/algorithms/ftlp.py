"""FT-LP: Fine-Tuning with Large-scale pre-trained Priors (arXiv 2406.05628).

Plain fine-tuning uses the pre-trained network only as a starting point. FT-LP keeps a
frozen copy ``g_0`` of it as a *prior* and adds, at every optimizer step, a KL term between
the fine-tuned model's feature distribution and the prior's (DESIGN.md §4)::

    Q_l(z|x) = N(g_0,l(x), diag σ²_Q,l)                      prior, fixed before training
    P_l(z|x) = N(μ_φ,l(g_θ,l(x)), diag σ²_P,l)               posterior ("model distribution")
    loss     = L_base(θ) + λ · Σ_l mean_elements KL(P_l ‖ Q_l)

Only weights are published for large pre-trained models, so the encoder ``μ_φ`` (a per-channel
affine map initialised to the identity at the final layer; the identity at intermediate layers,
where a free encoder could absorb the drift and void the prior) and the per-channel
variances simulate the distribution. With ``ftlp_prior_var = learned`` the posterior is a
point (MAP): the entropy term no longer depends on the parameters and the KL reduces to
``-log Q(μ) = ½[(μ - f_0)²/σ²_Q + log σ²_Q]``, which with identity encoders and stem/stage
features is exactly MIRO's regulariser (Cha et al., arXiv 2203.10789; see ``miro.py``).

FT-LP is written once, as the :class:`FTLP` mixin; the variant of base ``X`` is
``class X_FTLP(FTLP, X)``, made by :func:`register_ftlp_variants` for every base that
declares ``EXPOSES_FEATURES``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from domainbed.algorithms.base import LossOutput, Minibatches
from domainbed.algorithms.registry import algorithm_names, get_algorithm_class, register_algorithm
from domainbed.lib.hparam import HParam, choice, log_uniform
from domainbed.lib.penalties import gaussian_kl, gaussian_neg_log_prior, inverse_softplus, positive_variance
from domainbed.networks import Features

LAYER_CHOICES = ("final", "stages", "all")


@dataclass(frozen=True)
class FTLPConfig:
    """The prior's configuration; see the ``ftlp_`` hparams for each field's meaning."""

    lam: float
    layers: str = "final"
    prior_var: str = "fixed"
    var_init: float = 0.1
    classifier_input: str = "mean"
    encoder_lr_mult: float = 10.0
    final_encoder: bool = False  # True: a learned affine posterior-mean encoder (hparam ftlp_mean_encoder)

    def __post_init__(self) -> None:
        if self.layers not in LAYER_CHOICES:
            raise ValueError(f"ftlp_layers must be one of {LAYER_CHOICES}, got {self.layers!r}")
        if self.prior_var not in ("fixed", "learned"):
            raise ValueError(f"ftlp_prior_var must be 'fixed' or 'learned', got {self.prior_var!r}")
        if self.classifier_input not in ("mean", "sample"):
            raise ValueError(f"ftlp_classifier_input must be 'mean' or 'sample', got {self.classifier_input!r}")
        if self.lam < 0 or self.var_init <= 0 or self.encoder_lr_mult <= 0:
            raise ValueError("ftlp_lambda must be >= 0, ftlp_var_init and ftlp_encoder_lr_mult > 0")

    @property
    def point_posterior(self) -> bool:
        # Learning σ²_Q together with σ²_P lets the KL collapse by inflating both; with a
        # point posterior the log σ²_Q term holds σ²_Q at the size of the drift instead.
        return self.prior_var == "learned"

    @property
    def uses_final(self) -> bool:
        return self.layers in ("final", "all")

    @property
    def uses_stages(self) -> bool:
        return self.layers in ("stages", "all")


class DiagonalEncoder(nn.Module):
    """The posterior-mean encoder at the final layer: ``μ = a ⊙ f + b``, the identity at init.

    Our choice (the paper's encoder is not public): per-channel, so it can rescale and shift
    features to match the prior but cannot rotate them, and it costs O(d), not O(d²).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f * self.scale + self.shift


class PriorKL(nn.Module):
    """Per-layer variances and the KL between posterior and prior features.

    ``forward(posterior_means, prior_features)`` takes one tensor per layer (pooled
    ``(N, C)`` or maps ``(N, C, H, W)``) and returns ``Σ_l mean KL_l`` in fp32.
    """

    def __init__(self, channels: list[int], config: FTLPConfig):
        super().__init__()
        self.config = config
        raw = float(inverse_softplus(config.var_init))
        # Posterior variances start equal to the prior's, so KL = 0 at initialisation.
        self.raw_var_p = nn.ParameterList(nn.Parameter(torch.full((c,), raw)) for c in channels)
        if config.prior_var == "learned":
            self.raw_var_q = nn.ParameterList(nn.Parameter(torch.full((c,), raw)) for c in channels)
        else:
            self.raw_var_q = None
            self.register_buffer("fixed_var_q", torch.tensor(config.var_init))

    @staticmethod
    def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return v.view(1, -1, *([1] * (like.dim() - 2)))

    def var_p(self, layer: int, like: torch.Tensor) -> torch.Tensor:
        return self._per_channel(positive_variance(self.raw_var_p[layer]), like)

    def var_q(self, layer: int, like: torch.Tensor) -> torch.Tensor:
        if self.raw_var_q is None:
            return self.fixed_var_q
        return self._per_channel(positive_variance(self.raw_var_q[layer]), like)

    def forward(self, posterior: list[torch.Tensor], prior: list[torch.Tensor]) -> torch.Tensor:
        assert len(posterior) == len(prior) == len(self.raw_var_p)
        total = torch.zeros((), device=posterior[0].device)
        for i, (mu, f0) in enumerate(zip(posterior, prior)):
            if self.config.point_posterior:
                term = gaussian_neg_log_prior(mu, f0, self.var_q(i, mu), reduction="mean")
            else:
                term = gaussian_kl(mu, self.var_p(i, mu), f0, self.var_q(i, mu), reduction="mean")
            total = total + term
        return total


FTLP_HPARAMS: dict[str, HParam] = {
    "ftlp_lambda": HParam(0.1, log_uniform(-3, 0), "weight λ of the prior KL (dataset defaults: MIRO's table)"),
    "ftlp_layers": HParam("final", choice(*LAYER_CHOICES), "final pooled features, stem+stages, or all"),
    "ftlp_prior_var": HParam("fixed", choice("fixed", "learned"), "prior variance fixed, or learned per channel (point posterior)"),
    "ftlp_var_init": HParam(0.1, choice(0.01, 0.1, 1.0), "initial (or fixed) prior variance; posterior starts equal"),
    "ftlp_classifier_input": HParam("mean", choice("mean", "sample"), "classifier reads the posterior mean or a reparameterised sample"),
    "ftlp_encoder_lr_mult": HParam(10.0, choice(1.0, 10.0), "lr multiplier of the encoder and variances"),
    # Identity by default: measured on RotatedMNISTSubset, the KL drove a learned affine
    # encoder's scale to 0 whenever the prior's features were near 0, which starved the
    # classifier that reads the posterior mean (docs/evidence/README.md).
    "ftlp_mean_encoder": HParam("identity", choice("identity", "affine"), "final-layer posterior mean: identity or a learned per-channel affine map"),
}


class FTLP:
    """Mixin adding the FT-LP prior to any base algorithm whose ``compute_loss`` returns
    ``extras["x"]`` and ``extras["features"]`` (ERM, CORAL, SWAD do). Put it first:
    ``class ERM_FTLP(FTLP, ERM)``."""

    HPARAMS = FTLP_HPARAMS

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Mapping[str, Any]):
        super().__init__(input_shape, num_classes, num_domains, hparams)  # type: ignore[call-arg]
        self.ftlp_cfg = self.ftlp_config()
        # The prior: a frozen copy with the same pretrained weights. It is kept out of the
        # module tree on purpose: not in parameters(), state_dict(), optimizers or SWAD.
        prior = copy.deepcopy(self.featurizer).eval().requires_grad_(False)
        object.__setattr__(self, "_prior_net", prior)
        self.want_intermediates = self.ftlp_cfg.uses_stages
        channels = self._layer_channels()
        d = self.featurizer.n_outputs
        use_encoder = self.ftlp_cfg.uses_final and self.ftlp_cfg.final_encoder
        self.posterior_encoder = DiagonalEncoder(d) if use_encoder else None
        self.prior_kl = PriorKL(channels, self.ftlp_cfg)

    def ftlp_config(self) -> FTLPConfig:
        h = self.hparams
        return FTLPConfig(
            lam=float(h["ftlp_lambda"]), layers=h["ftlp_layers"], prior_var=h["ftlp_prior_var"],
            var_init=float(h["ftlp_var_init"]), classifier_input=h["ftlp_classifier_input"],
            encoder_lr_mult=float(h["ftlp_encoder_lr_mult"]),
            final_encoder=_mean_encoder(h["ftlp_mean_encoder"]),
        )

    @property
    def prior_network(self) -> nn.Module:
        return self._prior_net

    def _layer_channels(self) -> list[int]:
        with torch.no_grad():
            probe = self._prior_net.forward_features(torch.zeros(1, *self.input_shape), intermediates=self.ftlp_cfg.uses_stages)
        channels = [t.shape[1] for t in probe.intermediates] if self.ftlp_cfg.uses_stages else []
        return ([probe.final.shape[1]] if self.ftlp_cfg.uses_final else []) + channels

    def _apply(self, fn, recurse: bool = True):  # .to(), .cuda(), memory formats reach the prior too
        super()._apply(fn, recurse)
        self._prior_net._apply(fn)
        return self

    def setup(self, device=None):
        super().setup(device)
        if self._amp_dtype is not None:
            # The prior never trains: hold it in the autocast dtype (half the memory and bandwidth).
            self._prior_net.to(dtype=self._amp_dtype)
        if self.hparams.get("compile", False):
            # With compile on, the prior's forward is compiled as well as the featurizer's
            # (H200, ResNet-50: FT-LP step 37.5 ms eager, 33.2 ms compiled; benchmarks/README.md).
            self._prior_net.trunk.compile()
        return self

    def param_groups(self) -> list[dict[str, Any]]:
        groups = super().param_groups()
        extra = list(self.prior_kl.parameters())
        if self.posterior_encoder is not None:
            extra += list(self.posterior_encoder.parameters())
        if extra:
            groups.append({"params": extra, "lr": self.hparams["lr"] * self.ftlp_cfg.encoder_lr_mult})
        return groups

    # ------------------------------------------------------------------ model
    def featurize(self, x: torch.Tensor) -> Features:
        f = super().featurize(x)
        enc = self.posterior_encoder
        if enc is None:  # identity mean encoder: the posterior mean is the feature itself
            mean, z = f.final, f.final
        else:
            mean = enc(f.final)  # the posterior mean: trained through the KL
            # The classifier reads the posterior; the encoder is a variational parameter fitted
            # by the KL alone, so the cross-entropy sees it as a constant (with λ = 0 it stays
            # the identity and FT-LP follows the base algorithm exactly).
            z = f.final * enc.scale.detach() + enc.shift.detach()
        if self.training and self.ftlp_cfg.classifier_input == "sample" and self.ftlp_cfg.uses_final:
            std = self.prior_kl.var_p(0, z).detach().sqrt()
            z = z + std * torch.randn_like(z)
        return Features(z, f.intermediates, mean=mean)

    def compute_loss(self, minibatches: Minibatches) -> LossOutput:
        loss, logs, extras = super().compute_loss(minibatches)  # type: ignore[misc]
        if "x" not in extras or "features" not in extras:
            raise TypeError(f"{type(self).__name__}: the base algorithm must return extras['x'] and extras['features']")
        kl = self.prior_divergence(extras["x"], extras["features"])
        logs["ftlp_kl"] = kl.detach()
        return loss + self.ftlp_cfg.lam * kl, logs, extras

    def prior_features(self, x: torch.Tensor) -> Features:
        """The frozen prior's features of ``x``, as plain fp32 tensors without autograd."""
        with torch.inference_mode():  # the prior keeps no activations
            p = self._prior_net.forward_features(x, intermediates=self.ftlp_cfg.uses_stages)
        # Inference tensors cannot be saved for backward: one fp32 copy each (feature-sized).
        def copy(t: torch.Tensor) -> torch.Tensor:
            return t.to(torch.float32, copy=True)

        return Features(copy(p.final), tuple(copy(t) for t in p.intermediates))

    def prior_divergence(self, x: torch.Tensor, feats: Features) -> torch.Tensor:
        """Σ_l mean KL(P_l ‖ Q_l) on the features the base algorithm already computed."""
        cfg = self.ftlp_cfg
        p = self.prior_features(x)
        posterior: list[torch.Tensor] = []
        prior: list[torch.Tensor] = []
        if cfg.uses_final:
            posterior.append(feats.mean if feats.mean is not None else feats.final)
            prior.append(p.final)
        if cfg.uses_stages:
            posterior.extend(feats.intermediates)
            prior.extend(p.intermediates)
        return self.prior_kl(posterior, prior)

    def predictive_state(self) -> dict[str, torch.Tensor]:
        """Fold the posterior-mean encoder into the classifier's first linear layer, so the
        stand-alone predictor (what SWAD averages, what is deployed) is a plain featurizer +
        classifier, without the prior or the encoder: ``W_c (a ⊙ f + b) + b_c``."""
        state = super().predictive_state()
        if self.posterior_encoder is None:
            return state
        first = next(m for m in self.classifier.modules() if isinstance(m, nn.Linear))
        prefix = "classifier." if first is self.classifier else f"classifier.{_name_of(self.classifier, first)}."
        a, b = self.posterior_encoder.scale.detach(), self.posterior_encoder.shift.detach()
        state[prefix + "weight"] = first.weight.detach() * a  # W_c diag(a)
        state[prefix + "bias"] = first.weight.detach() @ b + first.bias.detach()
        return state


def _mean_encoder(value: str) -> bool:
    if value not in ("identity", "affine"):
        raise ValueError(f"ftlp_mean_encoder must be 'identity' or 'affine', got {value!r}")
    return value == "affine"


def _name_of(parent: nn.Module, child: nn.Module) -> str:
    return next(name for name, m in parent.named_modules() if m is child)


def make_ftlp_variant(base: type) -> type:
    """``class <Base>_FTLP(FTLP, Base)``: the FT-LP prior added to ``base``."""
    name = f"{base.__name__}_FTLP"
    attrs = {"__doc__": f"{base.__name__} with the FT-LP prior.", "__module__": __name__, "__qualname__": name,
             "FTLP_BASE": base.__name__}
    return type(name, (FTLP, base), attrs)


def register_ftlp_variants() -> list[str]:
    """The one FT-LP rule: register ``<Name>_FTLP`` for every registered algorithm that
    declares ``EXPOSES_FEATURES`` and is not itself an FT-LP configuration (MIRO is one).
    Idempotent; returns the names it added. Each variant is also an attribute of this module."""
    added = []
    for name in algorithm_names():
        base = get_algorithm_class(name)
        if issubclass(base, FTLP) or not getattr(base, "EXPOSES_FEATURES", False) or f"{name}_FTLP" in algorithm_names():
            continue
        variant = register_algorithm(make_ftlp_variant(base))
        globals()[variant.__name__] = variant
        added.append(variant.__name__)
    return added
