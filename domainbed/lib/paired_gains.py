"""Paired gains between two arms of a sweep run with paired seeds.

FT-LP (arXiv 2406.05628) claims that a base algorithm plus a KL term to the frozen
pre-trained prior generalises better than the base alone. With ``--paired_seeds`` every
arm of one trial shares the data order and initialisation, so the fair statistic is the
*paired* difference: for a trial seed and a test domain, ``acc(treatment) - acc(baseline)``
of the runs chosen by one selection rule.

Conventions (the evidence reports state them next to the numbers):

* gains are in accuracy points (the records hold fractions; × 100);
* the benchmark gain of one trial is the mean over the benchmark's test domains of the
  per-domain differences, and a trial counts only when *both* arms have *every* required
  domain (a trial missing a domain is left out, never averaged over fewer domains);
* the per-domain gain uses every trial in which both arms have that domain;
* mean ± SE over trials with SE = sample standard deviation (ddof = 1) / √n; SE is NaN
  when n < 2. (``collect_results`` tables use the population std; these do not.)

Input is the frame of selected runs of :meth:`domainbed.lib.selection.SelectionMethod.select`
(columns ``dataset``, ``algorithm``, ``test_env``, ``trial_seed``, ``test_acc`` and, for the
default required domains, ``n_envs``). Nothing here imports above ``lib``.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

# The comparisons of the evidence v2 report (docs/evidence/v2): (treatment, baseline).
EVIDENCE_COMPARISONS: tuple[tuple[str, str], ...] = (
    ("ERM_FTLP", "ERM"),
    ("CORAL_FTLP", "CORAL"),
    ("SWAD_FTLP", "SWAD"),
    ("ERM_FTLP", "MIRO"),
    ("ERM_FTLP", "ERM_FTLP_ShuffledPrior"),
    ("MIRO", "ERM"),
)

# ``test_env`` of the rows holding the mean over a benchmark's domains.
AVERAGE = -1

GAIN_COLUMNS = ["dataset", "treatment", "baseline", "comparison", "test_env", "mean", "se", "n", "trials"]
ARM_COLUMNS = ["dataset", "algorithm", "test_env", "mean", "se", "n"]


def comparison_name(treatment: str, baseline: str) -> str:
    """The label of a comparison in reports: ``"treatment − baseline"`` (a minus sign)."""
    return f"{treatment} − {baseline}"


def mean_se(values: Sequence[float] | np.ndarray) -> tuple[float, float, int]:
    """(mean, SE, n) with SE = sample std (ddof = 1) / √n; SE is NaN for n < 2, mean NaN for n = 0."""
    arr = np.asarray(values, dtype=float)
    n = int(arr.size)
    if n == 0:
        return math.nan, math.nan, 0
    se = float(arr.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return float(arr.mean()), se, n


def required_domains(selected: pd.DataFrame) -> dict[str, list[int]]:
    """Every domain index of each dataset, ``range(n_envs)``, from the selected frame's ``n_envs``."""
    if selected.empty:
        return {}
    return {str(d): list(range(int(n))) for d, n in selected.groupby("dataset")["n_envs"].max().items()}


def _arm(selected: pd.DataFrame, dataset: str, algorithm: str) -> pd.Series:
    """Test accuracy (points) of one arm indexed by (trial_seed, test_env)."""
    part = selected[(selected["dataset"] == dataset) & (selected["algorithm"] == algorithm)]
    if part.duplicated(["trial_seed", "test_env"]).any():
        raise ValueError(
            f"{dataset}/{algorithm} has several selected runs for one (trial_seed, test_env): "
            "pass the output of a selection rule's select(), which keeps one run per group"
        )
    index = pd.MultiIndex.from_arrays(
        [part["trial_seed"].astype("int64"), part["test_env"].astype("int64")], names=["trial_seed", "test_env"]
    )
    return pd.Series(100.0 * part["test_acc"].to_numpy(dtype=float), index=index)


def trial_gains(
    selected: pd.DataFrame, dataset: str, treatment: str, baseline: str, domains: Sequence[int]
) -> pd.DataFrame:
    """Per-(trial, domain) paired differences in points: columns trial_seed, test_env, gain.

    Only (trial, domain) pairs present for both arms, and only the ``domains`` listed.
    """
    diff = (_arm(selected, dataset, treatment) - _arm(selected, dataset, baseline)).dropna()
    frame = diff.rename("gain").reset_index()
    return frame[frame["test_env"].isin(list(domains))].sort_values(["trial_seed", "test_env"]).reset_index(drop=True)


def paired_gains(
    selected: pd.DataFrame,
    comparisons: Sequence[tuple[str, str]] = EVIDENCE_COMPARISONS,
    domains: Mapping[str, Sequence[int]] | None = None,
) -> pd.DataFrame:
    """Mean ± SE paired gain per (dataset, comparison): over the benchmark and per domain.

    ``domains[dataset]`` lists the test domains a trial must have (both arms) to count in
    the benchmark mean; default: every domain of the dataset (:func:`required_domains`).
    Returns one row per (dataset, comparison) with ``test_env == AVERAGE`` (the benchmark
    gain) followed by one row per required domain, columns :data:`GAIN_COLUMNS`
    (``trials``: the sorted trial seeds used). Every comparison of every dataset is listed,
    also when n is 0, so incomplete comparisons are never silently dropped.
    """
    domains = dict(domains) if domains is not None else required_domains(selected)
    rows = []
    for dataset in sorted(domains):
        wanted = [int(e) for e in domains[dataset]]
        for treatment, baseline in comparisons:
            label = comparison_name(treatment, baseline)
            gains = trial_gains(selected, dataset, treatment, baseline, wanted)
            per_trial = gains.groupby("trial_seed")["gain"].agg(["mean", "count"])
            complete = per_trial[per_trial["count"] == len(wanted)]
            mean, se, n = mean_se(complete["mean"].to_numpy())
            rows.append([dataset, treatment, baseline, label, AVERAGE, mean, se, n, tuple(int(t) for t in complete.index)])
            for env in wanted:
                part = gains[gains["test_env"] == env]
                mean, se, n = mean_se(part["gain"].to_numpy())
                rows.append([dataset, treatment, baseline, label, env, mean, se, n, tuple(int(t) for t in part["trial_seed"])])
    frame = pd.DataFrame(rows, columns=GAIN_COLUMNS)
    frame["n"] = frame["n"].astype("int64")
    frame["test_env"] = frame["test_env"].astype("int64")
    return frame


def arm_accuracy(selected: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy (points) per (dataset, algorithm, test_env): mean ± SE (ddof = 1) over trials and n."""
    rows = []
    for (dataset, algorithm, env), part in selected.groupby(["dataset", "algorithm", "test_env"], sort=True):
        mean, se, n = mean_se(100.0 * part["test_acc"].to_numpy(dtype=float))
        rows.append([dataset, algorithm, int(env), mean, se, n])
    return pd.DataFrame(rows, columns=ARM_COLUMNS)


def trials_for_se(se: float, n: int, target: float) -> int | None:
    """Trials needed for the SE of a mean over trials to reach ``target`` (same units).

    The per-trial spread is estimated from the trials so far, ``sd = se · √n`` (ddof = 1),
    and the answer is the smallest ``m ≥ 2`` with ``sd / √m ≤ target``. ``None`` when the
    spread cannot be estimated yet (n < 2). An estimate from few trials is itself noisy:
    re-estimate as trials arrive.
    """
    if target <= 0:
        raise ValueError(f"target SE must be positive, got {target}")
    if n < 2 or math.isnan(se):
        return None
    sd = se * math.sqrt(n)
    # the small tolerance keeps an exact hit (sd / sqrt(m) == target) from rounding up a trial
    return max(2, math.ceil((sd / target) ** 2 - 1e-9))


def confidence_interval(mean: float, se: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Two-sided Student-t interval of a mean over ``n`` paired trials: mean ± t · SE.

    ``t`` is the ``(1 + level) / 2`` quantile of Student's t with n − 1 degrees of freedom,
    the right width when the SE itself is estimated from the same few trials (for n = 5,
    t = 2.78, not 1.96). ``(nan, nan)`` when n < 2.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if n < 2 or math.isnan(se):
        return math.nan, math.nan
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * se
    return mean - half, mean + half


def reading(mean: float, se: float, n: int, level: float = 0.95) -> str:
    """Plain words for a paired gain: ``"treatment better"`` when its confidence interval
    (:func:`confidence_interval`) lies above 0, ``"baseline better"`` when below, ``"no
    detectable difference"`` when it covers 0, ``"too few trials"`` when n < 2."""
    low, high = confidence_interval(mean, se, n, level)
    if math.isnan(low):
        return "too few trials"
    if low > 0:
        return "treatment better"
    if high < 0:
        return "baseline better"
    return "no detectable difference"


def format_gain(mean: float, se: float, n: int) -> str:
    """``+1.2 ± 0.3`` in points; ``+1.2 (no SE)`` for one trial; ``–`` for none."""
    if n == 0:
        return "–"
    if math.isnan(se):
        return f"{mean:+.1f} (no SE)"
    return f"{mean:+.1f} ± {se:.1f}"
