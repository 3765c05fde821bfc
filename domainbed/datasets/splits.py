"""In/out splits of a domain, seeded exactly as DomainBed does (docs/design.md)."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset, Subset

from domainbed.lib.errors import UserError
from domainbed.lib.misc import seed_hash


def split_dataset(dataset: Dataset, n_first: int, seed: int = 0) -> tuple[Subset, Subset]:
    """Shuffle ``range(len(dataset))`` with ``seed`` and cut it after ``n_first`` items.

    Returns ``(first, rest)`` as ``Subset`` views: no data is copied.
    """
    n = len(dataset)
    if not 0 <= n_first <= n:
        raise ValueError(f"cannot take {n_first} items from a domain of {n}")
    keys = np.arange(n)
    np.random.RandomState(seed).shuffle(keys)
    return Subset(dataset, keys[:n_first].tolist()), Subset(dataset, keys[n_first:].tolist())


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
