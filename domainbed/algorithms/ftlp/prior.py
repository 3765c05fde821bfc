"""FT-LP's prior module: per-layer variances, the KL, posterior noise at stage outputs, and
the BatchNorm mode shared by the prior and the trained network (see ``mixin.py``)."""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
from torch import nn

from domainbed.algorithms.ftlp.config import ABSOLUTE_VAR_FLOOR, LEARNED_VAR_FLOOR, RELATIVE_VAR_FLOOR, FTLPConfig
from domainbed.algorithms.ftlp.gaussian import gaussian_kl, gaussian_neg_log_prior, inverse_softplus, positive_variance
from domainbed.lib.errors import UserError

_BN = nn.modules.batchnorm._BatchNorm


def sync_batchnorm_mode(trained: nn.Module, prior: nn.Module) -> None:
    """Give each BatchNorm of ``prior`` the mode of its twin in ``trained`` (same structure):
    batch statistics where the trained network uses them, running statistics elsewhere. The
    prior's BatchNorm momentum is 0, so its running statistics never change."""
    for mine, theirs in zip(trained.modules(), prior.modules()):
        if isinstance(mine, _BN):
            theirs.training = mine.training


def frozen_prior(featurizer: nn.Module) -> nn.Module:
    """The prior ``f_0``: a frozen copy of ``featurizer`` with the same pretrained weights, never
    trained, whose BatchNorm running statistics never change (momentum 0), so it can use batch
    statistics when asked (:func:`sync_batchnorm_mode`) without drifting."""
    prior = copy.deepcopy(featurizer).eval().requires_grad_(False)
    for m in prior.modules():
        if isinstance(m, _BN):
            m.momentum = 0.0
    return prior


def channel_variance(f: torch.Tensor) -> torch.Tensor:
    """Per-channel variance of ``(N, C)`` or ``(N, C, H, W)`` features over all other dims."""
    dims = [0] + list(range(2, f.dim()))
    return f.float().var(dim=dims, unbiased=False)


def floored_channel_variance(f: torch.Tensor, absolute: float = ABSOLUTE_VAR_FLOOR) -> torch.Tensor:
    """``max(v_c, 0.1 · mean_c v_c, absolute)``, ``v_c`` the :func:`channel_variance` of ``f``:
    a channel that hardly varies does not get an enormous weight 1/σ²."""
    v = channel_variance(f)
    return torch.maximum(v, torch.clamp(RELATIVE_VAR_FLOOR * v.mean(), min=absolute))


class PriorKL(nn.Module):
    """Per-layer variances and ``Σ_l mean KL(P_l ‖ Q_l)`` (fp32) between posterior and prior.

    σ²_Q,l: a buffer (calibrated from data, or fixed) or a learned parameter (MIRO).
    σ²_P,l = σ²_Q,l · exp(s_l) with ``s_l`` learned per channel, 0 at initialisation (so the
    KL is 0 when the means agree); present only for the sampled posterior.
    """

    def __init__(self, channels: list[int], config: FTLPConfig):
        super().__init__()
        self.config = config
        self.channels = list(channels)
        learned = config.prior_var == "learned"
        init = torch.tensor(config.var_init)
        for i, c in enumerate(channels):
            if learned:
                setattr(self, f"raw_var_q{i}", nn.Parameter(torch.full((c,), float(inverse_softplus(init)))))
            else:
                self.register_buffer(f"var_q{i}", torch.full((c,), config.var_init))
            if config.posterior == "sample":
                setattr(self, f"log_ratio{i}", nn.Parameter(torch.zeros(c)))
        # Kept on the CPU (see _apply): read every step without a device synchronisation.
        self.register_buffer("calibrated", torch.tensor(not config.measures_prior))

    def __len__(self) -> int:
        return len(self.channels)

    def _apply(self, fn, recurse: bool = True):
        flag = self.calibrated
        super()._apply(fn, recurse)
        self.calibrated = flag.cpu()
        return self

    @staticmethod
    def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return v.view(1, -1, *([1] * (like.dim() - 2)))

    def var_q(self, layer: int, like: torch.Tensor) -> torch.Tensor:
        if self.config.prior_var == "learned":
            v = positive_variance(getattr(self, f"raw_var_q{layer}"))
        else:
            v = getattr(self, f"var_q{layer}")
        return self._per_channel(v, like)

    def var_p(self, layer: int, like: torch.Tensor) -> torch.Tensor:
        if self.config.posterior == "point":
            return self.var_q(layer, like)
        return self.var_q(layer, like) * self._per_channel(getattr(self, f"log_ratio{layer}").exp(), like)

    def std_p(self, layer: int, like: torch.Tensor) -> torch.Tensor:
        return self.var_p(layer, like).sqrt()

    @torch.no_grad()
    def calibrate(self, prior_features: list[torch.Tensor]) -> None:
        """With ``ftlp_prior_var = calibrated``: σ²_Q,l = κ · max(v_c, 0.1 · mean_c v_c, 1e-6),
        ``v_c`` the prior's per-channel variance on this batch (ddof 0). With a learned σ²_Q
        started from the prior (``learned_var_init = prior``, MIRO's ``miro_var_init``): its
        start value ``softplus(b) + 1e-5`` = max(v_c, 0.1 · mean_c v_c, 1e-4)."""
        for i, f in enumerate(prior_features):
            if self.config.prior_var == "calibrated":
                getattr(self, f"var_q{i}").copy_(self.config.kappa * floored_channel_variance(f))
            elif self.config.prior_var == "learned" and self.config.learned_var_init == "prior":
                raw = getattr(self, f"raw_var_q{i}")
                raw.copy_(inverse_softplus(floored_channel_variance(f, LEARNED_VAR_FLOOR)).to(raw.device))
        self.calibrated.fill_(True)

    def forward(self, posterior: list[torch.Tensor], prior: list[torch.Tensor]) -> torch.Tensor:
        assert len(posterior) == len(prior) == len(self.channels)
        total = torch.zeros((), device=posterior[0].device)
        for i, (mu, f0) in enumerate(zip(posterior, prior)):
            var_q = self.var_q(i, mu)
            if self.config.prior_var == "learned":  # point posterior, learned σ²_Q: −log Q(μ) (MIRO)
                term = gaussian_neg_log_prior(mu, f0, var_q, reduction="mean")
            else:
                term = gaussian_kl(mu, self.var_p(i, mu), f0, var_q, reduction="mean")
            total = total + term
        return total


class NoiseInjector:
    """Forward hooks on the trunk modules whose outputs are the stage features (timm's
    ``feature_info``): while active, each stashes its output (the posterior mean given the
    upstream sample) and returns ``mean + σ_P ⊙ ε``, so the following layers read the sample.

    Not an ``nn.Module`` and holding no tensors between steps: copies of the featurizer (SWAD's
    predictor) carry the hooks, which do nothing unless this injector is active."""

    def __init__(self, featurizer: nn.Module, prior_kl: PriorKL, enabled: bool, input_shape: tuple[int, ...]):
        self.enabled = enabled
        self._prior_kl = prior_kl
        self._gen: torch.Generator | None = None
        self._means: list[torch.Tensor] = []
        if not enabled:
            return
        trunk = featurizer.trunk
        info = getattr(trunk, "feature_info", None)
        if info is None:
            raise UserError("ftlp_posterior=sample at stage layers needs a timm backbone with feature_info; "
                             "use ftlp_layers=final or ftlp_posterior=point")
        names = [i["module"] for i in info]
        for layer, name in enumerate(names):
            trunk.get_submodule(name).register_forward_hook(self._hook(layer))
        self._check_layout(featurizer, len(names), input_shape)

    def _check_layout(self, featurizer: nn.Module, n: int, input_shape: tuple[int, ...]) -> None:
        # The stashed module outputs must be the intermediates forward_intermediates returns
        # (true for conv nets; ViT blocks return tokens, reshaped afterwards). Eval mode, so
        # the probe leaves BatchNorm running statistics untouched.
        was_training = featurizer.training
        featurizer.eval()
        try:
            with torch.no_grad(), self.active(torch.Generator().manual_seed(0), noise=False):
                f = featurizer.forward_features(torch.zeros(2, *input_shape), intermediates=True)
                means = self.means()
        finally:
            featurizer.train(was_training)
        if len(means) != n or any(m.shape != t.shape for m, t in zip(means, f.intermediates)):
            raise UserError("ftlp_posterior=sample at stage layers needs a convolutional backbone whose stage "
                             "modules output the feature maps; use ftlp_layers=final or ftlp_posterior=point")

    def _hook(self, layer: int):
        def hook(module: nn.Module, inputs, out):
            if self._gen is None:
                return None
            self._means.append(out)
            if not self._noise:
                return None
            std = self._prior_kl.std_p(layer, out)
            eps = torch.randn(out.shape, generator=self._gen, device=out.device, dtype=torch.float32)
            return out + (std * eps).to(out.dtype)

        return hook

    @contextlib.contextmanager
    def active(self, gen: torch.Generator, noise: bool = True) -> Iterator[None]:
        self._gen, self._noise, self._means = (gen if self.enabled else None), noise, []
        try:
            yield
        finally:
            self._gen = None

    def means(self) -> list[torch.Tensor]:
        means, self._means = self._means, []
        return means

