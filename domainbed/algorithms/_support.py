"""Small helpers several algorithms share: pooling per-domain minibatches, per-domain risks,
penalties averaged over domain pairs, restarting Adam.

A private module (its name starts with ``_``): the package does not scan it for algorithms.
"""

from __future__ import annotations

from itertools import combinations
from typing import Callable, Sequence

import torch
from torch import nn

from domainbed.algorithms.base import Algorithm, Minibatches, cross_entropy


def pool(minibatches: Minibatches) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The concatenated inputs and labels of every domain, and each domain's batch size."""
    x = torch.cat([x for x, _ in minibatches])
    y = torch.cat([y for _, y in minibatches])
    return x, y, [len(y) for _, y in minibatches]


def domain_risks(logits: torch.Tensor, y: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Cross-entropy of each domain's minibatch, shape ``(len(sizes),)``, from pooled logits
    and labels split by ``sizes`` (as :func:`pool` returns them)."""
    return torch.stack([cross_entropy(lg, t) for lg, t in zip(torch.split(logits, list(sizes)), torch.split(y, list(sizes)))])


def mean_over_domain_pairs(
    per_domain: Sequence[torch.Tensor], penalty: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Mean of ``penalty(a, b)`` over the unordered pairs of domains (CORAL, MMD).

    With a single domain there is no pair: the penalty is a float32 zero (the dtype of the
    risks), so adding it leaves the loss unchanged.
    """
    if not per_domain:
        raise ValueError("mean_over_domain_pairs needs at least one domain's features")
    pairs = list(combinations(range(len(per_domain)), 2))
    if not pairs:
        return per_domain[0].new_zeros((), dtype=torch.float32)
    return torch.stack([penalty(per_domain[i], per_domain[j]) for i, j in pairs]).mean()


def restart_optimizer(algorithm: Algorithm, lr: float | None = None) -> None:
    """Replace the optimizer by a fresh one (Adam without moments; any optimizer without state).

    DomainBed restarts Adam when a penalty weight jumps (IRM, VREx, Fishr, IB_*) and when
    EQRM leaves its burn-in, because Adam's running moments do not fit the new gradient
    scale. ``lr`` sets a new base learning rate; groups that run at a multiple of the base
    rate (FT-LP's encoder) keep that multiple. The training loop checkpoints
    ``algorithm.optimizer`` whichever object it is, learning rates included.
    """
    algorithm.optimizer = algorithm.configure_optimizer()
    if lr is not None:
        base = float(algorithm.hparams["lr"])
        for group in algorithm.optimizer.param_groups:
            group["lr"] = group["lr"] / base * lr
    # The new groups' rates are the base rates: scale them to the current step of the schedule.
    algorithm.lr_schedule.apply(algorithm.optimizer)


def network_parameters(algorithm: Algorithm) -> list[nn.Parameter]:
    """The trainable parameters of the featurizer and the classifier, in a fixed order."""
    return [p for p in algorithm.featurizer.parameters() if p.requires_grad] + [
        p for p in algorithm.classifier.parameters() if p.requires_grad
    ]
