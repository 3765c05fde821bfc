"""CAD and CondCAD: contrastive adversarial domain bottlenecks (Ruan et al., "Optimal
representations for covariate shift", arXiv 2201.00057).

CAD lowers I(D; Z), the information the representation keeps about the domain; CondCAD
lowers I(D; Z | Y). Both use a SupCon-style loss (Khosla et al., arXiv 2004.11362) over
the pooled batch whose "positives" are samples of other domains.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from domainbed.algorithms._support import pool
from domainbed.algorithms.base import Algorithm, LossOutput, Minibatches, cross_entropy
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.hparam import HParam, choice

BASE_TEMPERATURE = 0.07  # SupCon's reference temperature: the loss is scaled by T / 0.07


def _masked_logsumexp(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise log Σ exp(values) over entries where ``mask``; -inf for an empty row."""
    return torch.logsumexp(values.masked_fill(~mask, float("-inf")), dim=1)


def _finite_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of the finite entries (0 when there are none), without a host synchronisation."""
    finite = torch.isfinite(values)
    total = torch.where(finite, values, torch.zeros_like(values)).sum()
    return total / finite.sum().clamp_min(1)


def cad_bottleneck_loss(
    z: torch.Tensor,
    y: torch.Tensor,
    domains: torch.Tensor,
    temperature: float,
    conditional: bool,
    flipped: bool = True,
    normalized: bool = False,
) -> torch.Tensor:
    """The (conditional) contrastive domain-bottleneck loss of features ``z`` ``(n, d)``.

    With similarities ``s_ij = z_i · z_j / temperature`` (i ≠ j) and, for anchor i,
    ``log p_i(j) = s_ij - log Σ_{k ∈ C_i} exp(s_ik)``:

    * CAD (``conditional=False``): ``C_i`` = all other samples. Flipped (the default), the
      anchor's loss is ``-log Σ_{j: other domain} p_i(j)`` (predict another domain's sample);
      otherwise ``log Σ_{j ≠ i: same domain} p_i(j)``. Anchors without another sample of
      their label are left out, as in the paper's code.
    * CondCAD: ``C_i`` = the other samples with the same label, and the sums run over those
      of another domain (flipped) or of the same domain; anchors whose sum is empty are
      left out.

    Each anchor's loss is scaled by ``temperature / 0.07``; the result is the mean over
    anchors of the finite values (0 if none). ``normalized`` puts ``z`` on the unit sphere
    first. Computed in fp32.
    """
    z = z.float()
    if normalized:
        z = F.normalize(z, dim=1)
    n = z.shape[0]
    others = ~torch.eye(n, dtype=torch.bool, device=z.device)
    same_y = (y[:, None] == y[None, :]) & others
    same_d = (domains[:, None] == domains[None, :]) & others
    other_d = (domains[:, None] != domains[None, :])
    logits = z @ z.T / temperature
    if not conditional:
        log_prob = logits - _masked_logsumexp(logits, others)[:, None]
        valid = same_y.any(dim=1)
        target = other_d if flipped else same_d
    else:
        target = (same_y & other_d) if flipped else (same_y & same_d)
        valid = target.any(dim=1)
        log_prob = logits - _masked_logsumexp(logits, same_y)[:, None]
    # An anchor with an empty sum has an infinite loss, which the finite mean drops anyway;
    # leaving it out here also keeps NaN out of the gradient (logsumexp of nothing).
    valid = valid & target.any(dim=1)
    per_anchor = _masked_logsumexp(log_prob[valid], target[valid])
    sign = -1.0 if flipped else 1.0
    return _finite_mean(sign * (temperature / BASE_TEMPERATURE) * per_anchor)


class _CADBase(Algorithm):
    """Pooled cross-entropy + ``lmbda`` × :func:`cad_bottleneck_loss` of the features."""

    EXPOSES_FEATURES = True
    CONDITIONAL = False
    HPARAMS = {
        "lmbda": HParam(1e-1, choice(1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2), "weight of the bottleneck loss"),
        "temperature": HParam(0.1, choice(0.05, 0.1), "temperature of the contrastive similarities"),
        "is_normalized": HParam(False, help="L2-normalise features inside the bottleneck loss"),
        "is_project": HParam(False, help="compute the bottleneck loss on a 2-layer projection of the features"),
        "is_flipped": HParam(True, help="minimise -log p(other domain) instead of log p(same domain)"),
    }

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Any):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        d = self.featurizer.n_outputs
        self.project = (
            nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, 128)) if self.hparams["is_project"] else None
        )

    def param_groups(self) -> list[dict[str, Any]]:
        groups = super().param_groups()
        if self.project is not None:
            groups[0]["params"] = groups[0]["params"] + list(self.project.parameters())
        return groups

    def compute_loss(self, minibatches: Minibatches) -> LossOutput:
        x, y, sizes = pool(minibatches)
        domains = torch.repeat_interleave(torch.arange(len(sizes), device=y.device), torch.tensor(sizes, device=y.device))
        feats = self.featurize(x)
        logits = self.classifier(feats.final)
        z = feats.final if self.project is None else self.project(feats.final)
        bottleneck = cad_bottleneck_loss(z, y, domains, float(self.hparams["temperature"]), self.CONDITIONAL,
                                         bool(self.hparams["is_flipped"]), bool(self.hparams["is_normalized"]))
        ce = cross_entropy(logits, y)
        loss = ce + self.hparams["lmbda"] * bottleneck
        logs = {"loss_ce": ce.detach(), "loss_bottleneck": bottleneck.detach()}
        return loss, logs, {"x": x, "y": y, "features": feats, "logits": logits}


@register_algorithm
class CAD(_CADBase):
    """CAD: the bottleneck on I(D; Z)."""


@register_algorithm
class CondCAD(_CADBase):
    """CondCAD: the bottleneck on I(D; Z | Y)."""

    CONDITIONAL = True
