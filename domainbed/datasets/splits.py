"""In/out splits of a domain, and the unlabeled split of a test domain for domain
adaptation, seeded exactly as DomainBed does (docs/design.md). The shuffle itself is
:func:`split_dataset`, DomainBed's, key for key (also DomainBed's ``misc.split_dataset``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from torch.utils.data import Dataset, Subset

from domainbed.lib.errors import UserError
from domainbed.lib.seeding import seed_hash

__all__ = ["SplitDataset", "in_out_split", "split_dataset", "uda_split"]


class SplitDataset(Subset):
    """A view of ``underlying_dataset`` holding the items at ``keys`` (a ``torch`` ``Subset``,
    under the attribute names DomainBed's scripts read; DomainBed's ``misc._SplitDataset``)."""

    def __init__(self, underlying_dataset: Dataset, keys: Sequence[int]):
        super().__init__(underlying_dataset, [int(k) for k in keys])

    @property
    def underlying_dataset(self) -> Dataset:
        return self.dataset

    @property
    def keys(self) -> Sequence[int]:
        return self.indices


def split_dataset(dataset: Dataset, n: int, seed: int = 0) -> tuple[SplitDataset, SplitDataset]:
    """Shuffle ``range(len(dataset))`` with ``np.random.RandomState(seed)`` and cut it after
    ``n`` items: ``(first n, rest)`` as views, no data copied. DomainBed's split, key for key
    (our in/out and domain-adaptation splits are made with it)."""
    size = len(dataset)  # type: ignore[arg-type]
    if not 0 <= n <= size:
        raise ValueError(f"cannot take {n} items from a dataset of {size}")
    keys = np.arange(size)
    np.random.RandomState(seed).shuffle(keys)
    return SplitDataset(dataset, keys[:n].tolist()), SplitDataset(dataset, keys[n:].tolist())


def in_out_split(
    dataset: Dataset, env_index: int, trial_seed: int, holdout_fraction: float
) -> tuple[Subset, Subset]:
    """DomainBed's per-environment split: ``(in, out)``, ``out`` holding ``holdout_fraction``.

    The shuffle is seeded with ``seed_hash(trial_seed, env_index)``, so the same trial seed
    always gives the same split, whatever the algorithm or hparams.
    """
    if not 0.0 <= holdout_fraction < 1.0:
        raise UserError(f"--holdout_fraction must be in [0, 1), got {holdout_fraction}")
    n_out = int(len(dataset) * holdout_fraction)
    out, in_ = split_dataset(dataset, n_out, seed_hash(trial_seed, env_index))
    return in_, out


def uda_split(in_split: Dataset, env_index: int, trial_seed: int, uda_holdout_fraction: float) -> tuple[Subset, Subset]:
    """DomainBed's domain-adaptation split of a test domain's ``in`` split: ``(in, uda)``,
    ``uda`` holding ``int(len(in_split) * uda_holdout_fraction)`` items.

    As in DomainBed, the shuffle is seeded with the same ``seed_hash(trial_seed, env_index)``
    as the in/out split, and it is made whatever the task when the fraction is above 0, so
    that domain-generalization and domain-adaptation runs of one trial evaluate the same
    ``in`` split of the test domain.
    """
    if not 0.0 <= uda_holdout_fraction < 1.0:
        raise UserError(f"--uda_holdout_fraction must be in [0, 1), got {uda_holdout_fraction}")
    n_uda = int(len(in_split) * uda_holdout_fraction)  # type: ignore[arg-type]
    uda, in_ = split_dataset(in_split, n_uda, seed_hash(trial_seed, env_index))
    return in_, uda
