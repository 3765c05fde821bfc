"""The Gaussian terms of FT-LP's prior (arXiv 2406.05628) and MIRO's regulariser (arXiv 2203.10789).

Plain, differentiable functions, usable outside the trainer and tested alone
(tests/test_ftlp_gaussian.py):

- :func:`gaussian_kl` -- closed-form KL between diagonal Gaussians, the FT-LP regulariser.
- :func:`gaussian_neg_log_prior` -- the MAP (point-posterior) reduction of that KL,
  which is MIRO's regulariser.
- :func:`positive_variance` / :func:`inverse_softplus` -- the parameterisation of a
  learned per-channel variance and its initialisation.

They compute in fp32 even under bf16/fp16 autocast (``log var_q - log var_p`` subtracts
nearly equal numbers), as every penalty of :mod:`domainbed.algorithms.penalties` does.
"""

from __future__ import annotations

from typing import Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from domainbed.algorithms.penalties import fp32_region, to_fp32

__all__ = [
    "DEFAULT_VARIANCE_FLOOR",
    "Reduction",
    "gaussian_kl",
    "gaussian_neg_log_prior",
    "inverse_softplus",
    "positive_variance",
]

Reduction = Literal["none", "mean", "sum"]

#: Floor added to softplus so a learned variance never reaches 0 (MIRO uses 1e-5).
DEFAULT_VARIANCE_FLOOR = 1e-5

_REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"reduction must be one of {_REDUCTIONS}, got {reduction!r}."
        )


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def gaussian_kl(
    mu_p: Tensor,
    var_p: Tensor,
    mu_q: Tensor,
    var_q: Tensor,
    reduction: Reduction = "none",
) -> Tensor:
    """KL(N(mu_p, var_p) || N(mu_q, var_q)) for diagonal Gaussians, in closed form.

    Elementwise::

        0.5 * (log var_q - log var_p + (var_p + (mu_p - mu_q)**2) / var_q - 1)

    This is the FT-LP regulariser (arXiv 2406.05628) with P the posterior
    "model distribution" and Q the prior defined by the frozen pre-trained network.

    Arguments broadcast against each other, so variances can be per channel (e.g. shape
    ``(C,)`` against means of shape ``(B, C)``). Variances must be positive; they are not
    checked here because that would need a host synchronisation every step (use
    :func:`positive_variance` to parameterise them).

    The computation always runs in fp32 (fp64 inputs stay fp64) with autocast switched
    off, so it is stable under bf16/fp16 autocast; the result is fp32.

    Args:
        reduction: ``"none"`` (the broadcast elementwise KL), ``"mean"`` or ``"sum"``
            over all elements.
    """
    _check_reduction(reduction)
    with fp32_region(mu_p, var_p, mu_q, var_q):
        mu_p, var_p, mu_q, var_q = (to_fp32(t) for t in (mu_p, var_p, mu_q, var_q))
        # Written with the ratio var_p / var_q: ratio - log(ratio) - 1 is exactly 0 at
        # ratio == 1 and avoids subtracting two large logs.
        ratio = var_p / var_q
        kl = 0.5 * (ratio - torch.log(ratio) - 1.0 + (mu_p - mu_q).pow(2) / var_q)
        return _reduce(kl, reduction)


def gaussian_neg_log_prior(
    mu: Tensor,
    mu_q: Tensor,
    var_q: Tensor,
    reduction: Reduction = "none",
) -> Tensor:
    """Negative log density of a point ``mu`` under N(mu_q, var_q), without the constant.

    Elementwise ``0.5 * ((mu - mu_q)**2 / var_q + log var_q)``, i.e.
    ``-log N(mu; mu_q, var_q) - 0.5 * log(2 * pi)``.

    This is the MAP (point-posterior) reduction of :func:`gaussian_kl`: when the posterior
    P collapses to a point at ``mu``, ``KL(P || Q) = -H(P) - E_P[log Q]``; the entropy
    ``H(P)`` does not depend on the trained parameters and is dropped, leaving
    ``-log Q(mu)``. With an identity mean encoder (``mu`` = the fine-tuned features,
    ``mu_q`` = the frozen pre-trained features) and a learned per-channel ``var_q`` this
    is exactly MIRO's regulariser (Cha et al., arXiv 2203.10789). The ``log var_q`` term
    is what stops a learned ``var_q`` from growing without bound.

    Computed in fp32 with autocast off (see :func:`gaussian_kl`); returns fp32.
    """
    _check_reduction(reduction)
    with fp32_region(mu, mu_q, var_q):
        mu, mu_q, var_q = (to_fp32(t) for t in (mu, mu_q, var_q))
        nll = 0.5 * ((mu - mu_q).pow(2) / var_q + torch.log(var_q))
        return _reduce(nll, reduction)


def positive_variance(raw: Tensor, floor: float = DEFAULT_VARIANCE_FLOOR) -> Tensor:
    """Map an unconstrained parameter to a variance: ``softplus(raw) + floor``.

    The floor keeps ``log var`` and ``1 / var`` finite however far ``raw`` drifts
    (MIRO's parameterisation, arXiv 2203.10789, uses the same form with floor 1e-5).
    """
    if floor < 0:
        raise ValueError(f"floor must be >= 0, got {floor}.")
    return F.softplus(raw) + floor


def inverse_softplus(
    value: Union[float, Tensor], floor: float = DEFAULT_VARIANCE_FLOOR
) -> Tensor:
    """The ``raw`` such that ``positive_variance(raw, floor) == value``.

    Use it to initialise a raw variance parameter to a chosen variance, e.g.
    ``nn.Parameter(inverse_softplus(torch.full((C,), 0.1)))``. Pass ``floor=0`` for the
    plain inverse of softplus.

    Computed in fp64 as ``v + log(-expm1(-v))`` with ``v = value - floor``, which is
    accurate both for tiny ``v`` and for large ``v`` (where ``exp(v)`` would overflow).
    A float gives a tensor of the default dtype; a tensor keeps its dtype and device.

    Raises:
        ValueError: if any ``value <= floor`` (no finite ``raw`` reaches it).
    """
    if floor < 0:
        raise ValueError(f"floor must be >= 0, got {floor}.")
    if isinstance(value, Tensor):
        out_dtype = value.dtype if value.is_floating_point() else torch.get_default_dtype()
        target = value.detach().to(torch.float64)
    else:
        out_dtype = torch.get_default_dtype()
        target = torch.tensor(float(value), dtype=torch.float64)
    shifted = target - floor
    # Initialisation-time only, so a host sync for validation is fine here.
    if not bool(torch.all(shifted > 0)):
        raise ValueError(
            f"inverse_softplus needs every value > floor ({floor}); got a minimum of "
            f"{target.min().item()}. Choose a larger initial variance or a smaller floor."
        )
    raw = shifted + torch.log(-torch.expm1(-shifted))
    return raw.to(out_dtype)
