"""In/out splits of a domain, and the unlabeled split of a test domain for domain
adaptation, seeded exactly as DomainBed does (docs/design.md). The shuffle itself is
:func:`domainbed.lib.misc.split_dataset`."""

from __future__ import annotations

from torch.utils.data import Dataset, Subset

from domainbed.lib.errors import UserError
from domainbed.lib.misc import seed_hash, split_dataset

__all__ = ["in_out_split", "split_dataset", "uda_split"]


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
