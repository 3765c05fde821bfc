"""Penalties whose weight jumps after a warm-up of ``*_penalty_anneal_iters`` updates.

IRM and VREx (as DomainBed runs them) weigh their penalty by 1 during the first
``anneal_iters`` updates and by ``lambda`` afterwards. At the update where the weight jumps,
Adam's moment estimates are reset: they were fitted to gradients of a much smaller scale.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from domainbed.algorithms.base import Algorithm, Minibatches
from domainbed.algorithms.counters import UpdateCounter
from domainbed.lib.hparam import Sampler


def int_log_uniform(lo: float, hi: float) -> Sampler:
    """``int(10 ** U(lo, hi))``, DomainBed's distribution of the anneal iterations."""
    return lambda r: int(10 ** r.uniform(lo, hi))


def annealed_weight(updates_done: int, anneal_iters: int, lam: float) -> float:
    """The penalty weight of the next update: 1 before ``anneal_iters`` updates, then ``lam``."""
    return float(lam) if updates_done >= anneal_iters else 1.0


class AnnealedPenalty(Algorithm):
    """Base of algorithms with an annealed penalty; subclasses name their two hparams."""

    LAMBDA_HPARAM: ClassVar[str]
    ANNEAL_HPARAM: ClassVar[str]

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Mapping[str, Any]):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.update_count = UpdateCounter()

    @property
    def anneal_iters(self) -> int:
        return int(self.hparams[self.ANNEAL_HPARAM])

    def penalty_weight(self) -> float:
        """The weight the penalty gets in the next update."""
        return annealed_weight(self.update_count.value, self.anneal_iters, self.hparams[self.LAMBDA_HPARAM])

    def update(self, minibatches: Minibatches, unlabeled: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        if self.optimizer is None:
            self.setup()
        assert self.optimizer is not None
        if self.update_count.value == self.anneal_iters:
            # The same as a new Adam over the same parameter groups (what DomainBed does).
            self.optimizer.state.clear()
        weight = self.penalty_weight()
        out = super().update(minibatches, unlabeled)
        self.update_count.increment()
        out["penalty_weight"] = torch.tensor(weight)
        return out
