"""Plain, differentiable penalty functions (docs/design.md).

Each function here is usable outside the trainer and is tested alone:

- :func:`coral_penalty` -- the CORAL alignment term (Sun & Saenko, arXiv 1607.01719),
  as DomainBed's CORAL algorithm uses it.
- :func:`gaussian_kl` -- closed-form KL between diagonal Gaussians, the FT-LP
  regulariser (arXiv 2406.05628).
- :func:`gaussian_neg_log_prior` -- the MAP (point-posterior) reduction of that KL,
  which is MIRO's regulariser (arXiv 2203.10789).
- :func:`positive_variance` / :func:`inverse_softplus` -- the parameterisation of a
  learned per-channel variance and its initialisation.

All of them compute in fp32 even when called with bf16/fp16 tensors inside an autocast
region: the terms subtract nearly equal numbers (covariances, ``log var_q - log var_p``),
which half precision cannot resolve.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DEFAULT_VARIANCE_FLOOR",
    "Reduction",
    "coral_penalty",
    "gaussian_kl",
    "gaussian_neg_log_prior",
    "inverse_softplus",
    "positive_variance",
]

Reduction = Literal["none", "mean", "sum"]

#: Floor added to softplus so a learned variance never reaches 0 (MIRO uses 1e-5).
DEFAULT_VARIANCE_FLOOR = 1e-5

_REDUCTIONS = ("none", "mean", "sum")


def _fp32_region(*tensors: Tensor) -> ContextManager[None]:
    """A context that switches autocast off on the tensors' device type.

    Casting inputs up is not enough on its own: inside an autocast region, ops such as
    ``matmul`` would cast them straight back down.
    """
    device_type = tensors[0].device.type
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    # Devices without autocast (e.g. "meta") cannot be in an autocast region anyway.
    return contextlib.nullcontext()


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


def _to_fp32(t: Tensor) -> Tensor:
    # Keep fp64 as it is: only half precisions are promoted.
    return t if t.dtype == torch.float64 else t.float()


def coral_penalty(x: Tensor, y: Tensor) -> Tensor:
    """CORAL distance between two batches of features (Sun & Saenko, arXiv 1607.01719).

    The DomainBed form: the mean over features of the squared difference of the feature
    means, plus the mean over entries of the squared difference of the covariance
    matrices, the covariances with the unbiased ``n - 1`` normalisation.

    Args:
        x: features of one domain, shape ``(n_x, d)``, ``n_x >= 2``.
        y: features of another domain, shape ``(n_y, d)``, ``n_y >= 2``.

    Returns:
        A scalar fp32 tensor (fp64 if both inputs are fp64), differentiable in both inputs.
    """
    if x.dim() != 2 or y.dim() != 2:
        raise ValueError(
            f"coral_penalty expects 2-D feature batches (n, d); got shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)}. Flatten the features first."
        )
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"coral_penalty needs the same feature width in both batches; got "
            f"{x.shape[1]} and {y.shape[1]}."
        )
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(
            "coral_penalty needs at least 2 samples per batch for an unbiased covariance; "
            f"got {x.shape[0]} and {y.shape[0]}. Increase the batch size."
        )
    with _fp32_region(x, y):
        x = _to_fp32(x)
        y = _to_fp32(y)
        mean_x = x.mean(dim=0, keepdim=True)
        mean_y = y.mean(dim=0, keepdim=True)
        centred_x = x - mean_x
        centred_y = y - mean_y
        cov_x = centred_x.T @ centred_x / (x.shape[0] - 1)
        cov_y = centred_y.T @ centred_y / (y.shape[0] - 1)
        mean_term = (mean_x - mean_y).pow(2).mean()
        cov_term = (cov_x - cov_y).pow(2).mean()
        return mean_term + cov_term


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
    with _fp32_region(mu_p, var_p, mu_q, var_q):
        mu_p, var_p, mu_q, var_q = (_to_fp32(t) for t in (mu_p, var_p, mu_q, var_q))
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
    with _fp32_region(mu, mu_q, var_q):
        mu, mu_q, var_q = (_to_fp32(t) for t in (mu, mu_q, var_q))
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
