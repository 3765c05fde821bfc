"""The numbers behind the result tables: means, standard errors and paired gains.

Each function turns the output of a selection rule (one row per dataset, algorithm, test
env and trial seed, with ``test_acc``) into a frame of ``mean``, ``se`` and ``n``. Every
standard error is the population standard deviation (ddof 0) divided by √n, as DomainBed
(arXiv 2007.01434) reports it; with one trial it is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

# (treatment, baseline): a paired gain acc(treatment) - acc(baseline). The caller says which
# pairs to compare (domainbed.model_selection reads them from the algorithms' traits).
Comparison = tuple[str, str]


@dataclass(frozen=True)
class Stat:
    """A cell: a mean accuracy (fraction), its standard error and the number of trials.

    ``se`` and ``n`` are None for published numbers, which come without them.
    """

    mean: float
    se: float | None = None
    n: int | None = None


def mean_se(values: Sequence[float]) -> Stat:
    """Mean ± population-std/√n of ``values`` (which must not be empty)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise ValueError("mean_se needs at least one value")
    return Stat(float(arr.mean()), float(arr.std(ddof=0) / math.sqrt(arr.size)), int(arr.size))


def aggregate(df: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """Per group of ``keys``: mean, SE (population std / √n) and count of ``value``."""
    cols = keys + ["mean", "se", "n"]
    if df.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    grouped = df.groupby(keys, sort=True)[value]
    out = grouped.agg(mean="mean", std=lambda s: float(np.std(s.to_numpy(dtype=float), ddof=0)), n="count")
    out["se"] = out["std"] / np.sqrt(out["n"])
    return out.reset_index()[cols]


def per_domain_stats(selected: pd.DataFrame) -> pd.DataFrame:
    """Mean, SE and n of the test accuracy over trial seeds per (dataset, algorithm, test_env)."""
    return aggregate(selected, ["dataset", "algorithm", "test_env"], "test_acc")


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


def comparison_label(treatment: str, baseline: str) -> str:
    return f"{treatment} vs {baseline}"


def paired_gain_stats(selected: pd.DataFrame, comparisons: Sequence[Comparison]) -> pd.DataFrame:
    """Paired differences ``acc(treatment) - acc(baseline)`` per (dataset, comparison, test_env).

    Only trial seeds where both algorithms have a selected run are paired; the SE is that
    of the per-trial differences (population std / √n), consistent with the main tables.
    A comparison whose algorithms are not both in ``selected`` gives no rows.
    """
    keys = ["dataset", "test_env", "trial_seed"]
    present = set(selected["algorithm"]) if len(selected) else set()
    parts = []
    for treatment, baseline in comparisons:
        if not {treatment, baseline} <= present:
            continue
        t = selected[selected["algorithm"] == treatment][keys + ["test_acc"]]
        b = selected[selected["algorithm"] == baseline][keys + ["test_acc"]]
        both = t.merge(b, on=keys, suffixes=("_t", "_b"))
        parts.append(both.assign(comparison=comparison_label(treatment, baseline), diff=both["test_acc_t"] - both["test_acc_b"]))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=keys + ["comparison", "diff"])
    return aggregate(frame, ["dataset", "comparison", "test_env"], "diff")
