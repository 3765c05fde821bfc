"""The numbers behind the result tables: means, standard errors and paired gains.

Each function turns the output of a selection rule (one row per dataset, algorithm, test
env and trial seed, with ``test_acc``) into a frame of ``mean``, ``se`` and ``n``. The
standard errors are those of :mod:`domainbed.results.standard_error`: an accuracy cell's is
the population standard deviation (ddof 0) divided by √n, as DomainBed (arXiv 2007.01434)
reports it (0 with one trial); a paired gain's is the sample standard deviation (ddof 1)
divided by √n, from :func:`domainbed.results.paired_gains.paired_gains` (none with one trial).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pandas as pd

from domainbed.results.paired_gains import AVERAGE, Comparison, paired_gains
from domainbed.results.standard_error import accuracy_mean_se

ARM_COLUMNS = ["dataset", "algorithm", "test_env", "mean", "se", "n"]


@dataclass(frozen=True)
class Stat:
    """A cell: a mean accuracy (fraction), its standard error and the number of trials.

    ``se`` and ``n`` are None for published numbers, which come without them.
    """

    mean: float
    se: float | None = None
    n: int | None = None


def aggregate(df: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """Per group of ``keys``: mean, SE (accuracy convention: population std / √n) and count of ``value``."""
    cols = keys + ["mean", "se", "n"]
    if df.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    grouped = df.groupby(keys, sort=True)[value]
    out = grouped.agg(mean="mean", se=lambda s: accuracy_mean_se(s.to_numpy(dtype=float))[1], n="count")
    return out.reset_index()[cols]


def per_domain_stats(selected: pd.DataFrame) -> pd.DataFrame:
    """Mean, SE and n of the test accuracy over trial seeds per (dataset, algorithm, test_env)."""
    return aggregate(selected, ["dataset", "algorithm", "test_env"], "test_acc")


def arm_accuracy(selected: pd.DataFrame) -> pd.DataFrame:
    """:func:`per_domain_stats` in points (mean and SE × 100), columns :data:`ARM_COLUMNS`:
    each arm's test accuracy per domain, as the evidence reports and figures print it."""
    stats = per_domain_stats(selected)
    if stats.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in ARM_COLUMNS})
    return stats.assign(
        test_env=stats["test_env"].astype("int64"), mean=100 * stats["mean"].astype(float),
        se=100 * stats["se"].astype(float), n=stats["n"].astype("int64"),
    )[ARM_COLUMNS]


def _trial_average_stats(selected: pd.DataFrame, required: dict[str, Sequence[int]]) -> pd.DataFrame:
    """Per (dataset, algorithm): for each trial seed that has every test env in
    ``required[dataset]``, the mean over those envs; then mean ± SE over such trials."""
    keys = ["dataset", "algorithm"]
    if selected.empty:
        return aggregate(selected, keys, "trial_mean")
    wanted = {d: set(envs) for d, envs in required.items()}
    rows = selected[[env in wanted.get(d, ()) for d, env in zip(selected["dataset"], selected["test_env"])]]
    if rows.empty:
        return aggregate(rows, keys, "trial_mean")
    per_trial = rows.groupby([*keys, "trial_seed"], as_index=False).agg(
        trial_mean=("test_acc", "mean"), n_test_envs=("test_env", "nunique")
    )
    complete = per_trial["n_test_envs"] == per_trial["dataset"].map(lambda d: len(wanted[d]))
    return aggregate(per_trial[complete], keys, "trial_mean")


def dataset_average_stats(selected: pd.DataFrame, n_envs: dict[str, int]) -> pd.DataFrame:
    """Per (dataset, algorithm): for each trial seed the mean over the dataset's test envs, then mean ± SE.

    A trial seed missing any of the dataset's ``n_envs`` test envs is left out, so every
    trial averages over the same domains. (DomainBed averages whatever envs a trial has,
    which mixes easy and hard domains differently from trial to trial; a cell with no
    complete trial is missing here, and :func:`run_domains_stats` gives the average over
    the domains that were run.)
    """
    return _trial_average_stats(selected, {d: range(n) for d, n in n_envs.items()})


def run_domains(selected: pd.DataFrame, n_envs: dict[str, int]) -> dict[str, list[int]]:
    """Datasets whose selected runs cover only some of their test envs -> the envs covered."""
    out = {}
    for dataset, envs in selected.groupby("dataset")["test_env"]:
        present = sorted(int(e) for e in envs.unique())
        if len(present) < n_envs[dataset]:
            out[dataset] = present
    return out


def run_domains_stats(selected: pd.DataFrame, envs: dict[str, list[int]]) -> pd.DataFrame:
    """Like :func:`dataset_average_stats`, over ``envs[dataset]`` (the domains a sweep ran)."""
    return _trial_average_stats(selected, envs)


def paired_gain_stats(selected: pd.DataFrame, comparisons: Sequence[Comparison]) -> pd.DataFrame:
    """Paired differences ``value(treatment) - value(baseline)`` per (dataset, comparison, test_env),
    in the records' units: the per-domain rows of :func:`~domainbed.results.paired_gains.paired_gains`
    (every trial seed where both algorithms have a selected run; SE = sample std / √n, NaN
    for one trial). A comparison whose algorithms never ran in the same trial gives no rows.
    """
    cols = ["dataset", "comparison", "test_env", "mean", "se", "n"]
    if selected.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    domains = {str(d): sorted(int(e) for e in part["test_env"].unique()) for d, part in selected.groupby("dataset")}
    gains = paired_gains(selected, comparisons, domains, scale=1.0)
    return gains[(gains["test_env"] != AVERAGE) & (gains["n"] > 0)][cols].reset_index(drop=True)
