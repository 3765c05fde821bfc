"""Paired gains between two arms of a sweep run with paired seeds: the one paired-gain statistic.

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
  when n < 2 (:func:`domainbed.results.standard_error.gain_mean_se`). The gain tables of
  ``collect_results`` and the figures show these numbers; only accuracy cells use
  DomainBed's population std.

Input is the frame of selected runs of :meth:`domainbed.results.selection.SelectionMethod.select`
(columns ``dataset``, ``algorithm``, ``test_env``, ``trial_seed``, ``test_acc`` and, for the
default required domains, ``n_envs``). Which comparisons to compute is the caller's: the
scripts and reports pass :func:`domainbed.model_selection.paired_comparisons` of the
algorithms present, or a sweep file's list.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import pandas as pd
from scipy import stats

from domainbed.results.standard_error import gain_mean_se

# (treatment, baseline): a paired gain acc(treatment) - acc(baseline).
Comparison = tuple[str, str]

# ``test_env`` of the rows holding the mean over a benchmark's domains.
AVERAGE = -1

GAIN_COLUMNS = ["dataset", "treatment", "baseline", "comparison", "test_env", "mean", "se", "n", "trials"]


def comparison_name(treatment: str, baseline: str) -> str:
    """The label of a comparison in tables, figures and reports: ``"treatment − baseline"`` (a minus sign)."""
    return f"{treatment} − {baseline}"


def required_domains(selected: pd.DataFrame) -> dict[str, list[int]]:
    """Every domain index of each dataset, ``range(n_envs)``, from the selected frame's ``n_envs``."""
    if selected.empty:
        return {}
    return {str(d): list(range(int(n))) for d, n in selected.groupby("dataset")["n_envs"].max().items()}


def _arm(selected: pd.DataFrame, dataset: str, algorithm: str, scale: float) -> pd.Series:
    """Test accuracy (× ``scale``) of one arm indexed by (trial_seed, test_env)."""
    part = selected[(selected["dataset"] == dataset) & (selected["algorithm"] == algorithm)]
    if part.duplicated(["trial_seed", "test_env"]).any():
        raise ValueError(
            f"{dataset}/{algorithm} has several selected runs for one (trial_seed, test_env): "
            "pass the output of a selection rule's select(), which keeps one run per group"
        )
    index = pd.MultiIndex.from_arrays(
        [part["trial_seed"].astype("int64"), part["test_env"].astype("int64")], names=["trial_seed", "test_env"]
    )
    return pd.Series(scale * part["test_acc"].to_numpy(dtype=float), index=index)


def trial_gains(
    selected: pd.DataFrame, dataset: str, treatment: str, baseline: str, domains: Sequence[int], scale: float = 100.0
) -> pd.DataFrame:
    """Per-(trial, domain) paired differences (points; ``test_acc`` × ``scale``): columns
    trial_seed, test_env, gain.

    Only (trial, domain) pairs present for both arms, and only the ``domains`` listed.
    """
    diff = (_arm(selected, dataset, treatment, scale) - _arm(selected, dataset, baseline, scale)).dropna()
    frame = diff.rename("gain").reset_index()
    return frame[frame["test_env"].isin(list(domains))].sort_values(["trial_seed", "test_env"]).reset_index(drop=True)


def paired_gains(
    selected: pd.DataFrame,
    comparisons: Sequence[Comparison],
    domains: Mapping[str, Sequence[int]] | None = None,
    scale: float = 100.0,
) -> pd.DataFrame:
    """Mean ± SE paired gain per (dataset, comparison): over the benchmark and per domain.

    ``comparisons``: the (treatment, baseline) pairs, in the order they are reported.
    ``domains[dataset]`` lists the test domains a trial must have (both arms) to count in
    the benchmark mean; default: every domain of the dataset (:func:`required_domains`).
    Returns one row per (dataset, comparison) with ``test_env == AVERAGE`` (the benchmark
    gain) followed by one row per required domain, columns :data:`GAIN_COLUMNS`
    (``trials``: the sorted trial seeds used). Every comparison of every dataset is listed,
    also when n is 0, so incomplete comparisons are never silently dropped. Gains are in
    points (``test_acc`` × 100); ``scale=1`` keeps the records' own units (a metric such as
    NLL). SE: :func:`~domainbed.results.standard_error.gain_mean_se` (sample std / √n).
    """
    domains = dict(domains) if domains is not None else required_domains(selected)
    rows = []
    for dataset in sorted(domains):
        wanted = [int(e) for e in domains[dataset]]
        for treatment, baseline in comparisons:
            label = comparison_name(treatment, baseline)
            gains = trial_gains(selected, dataset, treatment, baseline, wanted, scale)
            per_trial = gains.groupby("trial_seed")["gain"].agg(["mean", "count"])
            complete = per_trial[per_trial["count"] == len(wanted)]
            mean, se, n = gain_mean_se(complete["mean"].to_numpy())
            rows.append([dataset, treatment, baseline, label, AVERAGE, mean, se, n, tuple(int(t) for t in complete.index)])
            for env in wanted:
                part = gains[gains["test_env"] == env]
                mean, se, n = gain_mean_se(part["gain"].to_numpy())
                rows.append([dataset, treatment, baseline, label, env, mean, se, n, tuple(int(t) for t in part["trial_seed"])])
    frame = pd.DataFrame(rows, columns=GAIN_COLUMNS)
    frame["n"] = frame["n"].astype("int64")
    frame["test_env"] = frame["test_env"].astype("int64")
    return frame


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
