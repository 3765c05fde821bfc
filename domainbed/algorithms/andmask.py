"""AND-mask (Parascandolo et al., arXiv 2009.00329) and SAND-mask (Shahtalebi et al.,
arXiv 2106.02266): step only along gradient components on which the domains agree.

Both compute one gradient per training domain and replace the optimizer's gradient by a
masked mean of them, so they write their own :meth:`update` (the optimizer, autocast and
the grad scaler are used as the base class uses them).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from domainbed.algorithms.base import Algorithm, Minibatches, cross_entropy
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.hparam import HParam, log_uniform, uniform

log = logging.getLogger(__name__)

# Added to the kept fraction before dividing by it, as in the papers' code: an all-zero
# mask gives a zero gradient instead of a division by zero.
_EPS_FRACTION = 1e-10


def _rescaled(mask: torch.Tensor, mean_grad: torch.Tensor) -> torch.Tensor:
    # Divide by the fraction of components kept, so the step size does not shrink with
    # the mask (both papers do this per parameter tensor).
    return mask * mean_grad / (_EPS_FRACTION + mask.mean())


def and_mask(grads: torch.Tensor, tau: float) -> torch.Tensor:
    """AND-mask of per-domain gradients of one parameter tensor.

    Args:
        grads: shape ``(n_domains, *param_shape)``, one gradient per domain.
        tau: agreement threshold in [0, 1]; a component is kept when
            ``|mean over domains of sign(grad)| >= tau`` (1: every domain has the same sign).

    Returns:
        ``mask * mean(grads) / mean(mask)``, shape ``param_shape``.
    """
    agreement = torch.sign(grads).mean(dim=0).abs()
    mask = (agreement >= tau).to(grads.dtype)
    return _rescaled(mask, grads.mean(dim=0))


def sand_mask(grads: torch.Tensor, tau: float, k: float) -> torch.Tensor:
    """SAND-mask (smoothed AND-mask) of per-domain gradients of one parameter tensor.

    The mask is continuous: ``max(0, tanh(k / var * (|mean sign| - tau)))`` with ``var``
    the unbiased variance over domains of each component, so components whose sign
    agreement exceeds ``tau`` and whose magnitudes agree pass almost unchanged. A NaN
    variance (one domain) counts as 1e-17, and a NaN mask entry (0/0) as 1e-17, as in the
    paper's code. Returns ``mask * mean(grads) / mean(mask)``.
    """
    variance = grads.var(dim=0)
    variance = torch.nan_to_num(variance, nan=1e-17)
    agreement = torch.sign(grads).mean(dim=0).abs()
    mask = torch.tanh(k / variance * (agreement - tau))
    mask = torch.clamp_min(mask, 0.0)  # NaN stays NaN here ...
    mask = torch.nan_to_num(mask, nan=1e-17)  # ... and becomes 1e-17 (infinities are not NaN)
    return _rescaled(mask, grads.mean(dim=0))


@register_algorithm
class ANDMask(Algorithm):
    """One cross-entropy gradient per domain; the step uses their AND-masked mean."""

    HPARAMS = {"tau": HParam(1, uniform(0.5, 1.0), "sign-agreement threshold of the mask")}

    def combine(self, grads: torch.Tensor) -> torch.Tensor:
        """The gradient used for one parameter from its ``(n_domains, ...)`` per-domain gradients."""
        return and_mask(grads, float(self.hparams["tau"]))

    def update(self, minibatches: Minibatches, unlabeled: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        minibatches = self.begin_update(minibatches)
        assert self.optimizer is not None and self.scaler is not None
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        # The masks see true gradients: SAND-mask's variance is not invariant to the loss scale.
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        per_param: list[list[torch.Tensor]] = [[] for _ in params]
        losses = []
        for x, y in minibatches:  # one forward per domain, as in the papers
            with self.autocast():
                loss = cross_entropy(self.predict(x), y)
            grads = torch.autograd.grad(self.scaler.scale(loss), params, allow_unused=True)
            for store, p, g in zip(per_param, params, grads):
                store.append(torch.zeros_like(p) if g is None else g / scale)
            losses.append(loss.detach())
        self.optimizer.zero_grad(set_to_none=True)
        for p, grads in zip(params, per_param):
            p.grad = self.combine(torch.stack(grads)) * scale
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {"loss": torch.stack(losses).float().mean()}


@register_algorithm
class SANDMask(ANDMask):
    """ANDMask with the smooth, magnitude-aware SAND-mask."""

    HPARAMS = {
        # DomainBed's default. With tau = 1 the mask max(0, tanh(k/var · (agreement - 1))) is
        # 0 everywhere, so nothing trains; its random search draws tau from U(0, 1).
        "tau": HParam(1.0, uniform(0.0, 1.0), "sign-agreement threshold of the mask (< 1, or nothing trains)"),
        "k": HParam(1e1, log_uniform(-3, 5), "steepness of the tanh mask"),
    }

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Any):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        if float(self.hparams["tau"]) >= 1.0:
            log.warning("SANDMask with tau=%s masks every gradient component: no parameter will move "
                        "(DomainBed's default; its random search draws tau < 1)", self.hparams["tau"])

    def combine(self, grads: torch.Tensor) -> torch.Tensor:
        return sand_mask(grads, float(self.hparams["tau"]), float(self.hparams["k"]))
