"""Paired-gain statistics of the evidence reports, checked against numbers worked out by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from domainbed.results.paired_gains import (
    AVERAGE,
    confidence_interval,
    format_gain,
    paired_gains,
    reading,
    trial_gains,
    trials_for_se,
)
from domainbed.results.standard_error import accuracy_mean_se, gain_mean_se
from domainbed.results.tables import arm_accuracy

# Two domains; trial 2 of T lacks domain 1, so trial 2 cannot count in the benchmark mean.
ACC = {
    ("T", 0, 0): 0.80, ("T", 0, 1): 0.60,
    ("T", 1, 0): 0.70, ("T", 1, 1): 0.65,
    ("T", 2, 0): 0.90,
    ("B", 0, 0): 0.75, ("B", 0, 1): 0.50,
    ("B", 1, 0): 0.72, ("B", 1, 1): 0.61,
    ("B", 2, 0): 0.85, ("B", 2, 1): 0.55,
    ("C", 0, 0): 0.50, ("C", 0, 1): 0.50,
}


def selected_frame() -> pd.DataFrame:
    rows = [dict(dataset="D", algorithm=a, trial_seed=t, test_env=e, test_acc=v, n_envs=2) for (a, t, e), v in ACC.items()]
    return pd.DataFrame(rows)


def row(frame: pd.DataFrame, treatment: str, baseline: str, env: int) -> pd.Series:
    hit = frame[(frame["treatment"] == treatment) & (frame["baseline"] == baseline) & (frame["test_env"] == env)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_benchmark_gain_uses_only_complete_trials_and_sample_std():
    gains = paired_gains(selected_frame(), [("T", "B")])
    avg = row(gains, "T", "B", AVERAGE)
    # trial 0: ((80-75) + (60-50)) / 2 = 7.5; trial 1: ((70-72) + (65-61)) / 2 = 1.0; trial 2 left out.
    assert avg["n"] == 2 and avg["trials"] == (0, 1)
    assert avg["mean"] == pytest.approx(4.25)
    # sample std of {7.5, 1.0} = 6.5 / sqrt(2); SE = that / sqrt(2) = 3.25 (the population std would give 2.298).
    assert avg["se"] == pytest.approx(3.25)


def test_per_domain_gain_uses_every_trial_with_that_domain():
    gains = paired_gains(selected_frame(), [("T", "B")])
    d0 = row(gains, "T", "B", 0)
    # {5, -2, 5}: mean 8/3; squared deviations 49/9 + 196/9 + 49/9 = 294/9, / 2 = 49/3; SE = sqrt(49/9) = 7/3.
    assert (d0["n"], d0["trials"]) == (3, (0, 1, 2))
    assert d0["mean"] == pytest.approx(8 / 3) and d0["se"] == pytest.approx(7 / 3)
    d1 = row(gains, "T", "B", 1)
    assert (d1["n"], d1["mean"], d1["se"]) == (2, pytest.approx(7.0), pytest.approx(3.0))


def test_incomplete_comparisons_are_listed_with_their_n():
    gains = paired_gains(selected_frame(), [("T", "B"), ("C", "B"), ("T", "Missing")])
    one = row(gains, "C", "B", AVERAGE)
    assert one["n"] == 1 and one["mean"] == pytest.approx(((50 - 75) + (50 - 50)) / 2) and math.isnan(one["se"])
    none = row(gains, "T", "Missing", AVERAGE)
    assert none["n"] == 0 and math.isnan(none["mean"]) and none["trials"] == ()
    # 3 comparisons x (average + 2 domains), none dropped.
    assert len(gains) == 9


def test_required_domains_can_be_narrowed():
    gains = paired_gains(selected_frame(), [("T", "B")], domains={"D": [0]})
    avg = row(gains, "T", "B", AVERAGE)
    assert avg["n"] == 3 and avg["mean"] == pytest.approx(8 / 3)
    assert set(gains["test_env"]) == {AVERAGE, 0}


def test_trial_gains_and_duplicate_runs():
    gains = trial_gains(selected_frame(), "D", "T", "B", [0, 1])
    assert list(zip(gains["trial_seed"], gains["test_env"])) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]
    doubled = pd.concat([selected_frame(), selected_frame().iloc[:1]])
    with pytest.raises(ValueError, match="several selected runs"):
        paired_gains(doubled, [("T", "B")])


def test_the_two_standard_errors_arm_accuracy_and_format():
    # 1, 2, 4: squared deviations 16/9 + 1/9 + 25/9 = 42/9; sample variance 7/3, population 14/9.
    assert gain_mean_se([1.0, 2.0, 4.0]) == (pytest.approx(7 / 3), pytest.approx(math.sqrt(7 / 3) / math.sqrt(3)), 3)
    assert accuracy_mean_se([1.0, 2.0, 4.0]) == (pytest.approx(7 / 3), pytest.approx(math.sqrt(14 / 9) / math.sqrt(3)), 3)
    assert math.isnan(gain_mean_se([5.0])[1]) and accuracy_mean_se([5.0])[1] == 0.0  # one trial: none vs 0
    assert gain_mean_se([])[2] == 0
    with pytest.raises(ValueError, match="at least one value"):
        accuracy_mean_se([])
    # An arm's accuracy is an accuracy cell: DomainBed's population std, in points.
    stats = arm_accuracy(selected_frame())
    b0 = stats[(stats["algorithm"] == "B") & (stats["test_env"] == 0)].iloc[0]
    assert b0["n"] == 3 and b0["mean"] == pytest.approx(77.3333333) and b0["se"] == pytest.approx(
        pd.Series([75.0, 72.0, 85.0]).std(ddof=0) / math.sqrt(3))
    assert format_gain(1.234, 0.56, 3) == "+1.2 ± 0.6"
    assert format_gain(-2.0, math.nan, 1) == "-2.0 (no SE)"
    assert format_gain(math.nan, math.nan, 0) == "–"


def test_trials_for_se_from_the_spread_so_far():
    # gains 1, 2, 4 over 3 trials: sd = sqrt(7/3) = 1.528; SE <= 0.7 needs sd^2 / 0.49 = 4.76 -> 5 trials
    _, se, n = gain_mean_se([1.0, 2.0, 4.0])
    assert trials_for_se(se, n, 0.7) == 5
    sd = math.sqrt(7 / 3)
    assert sd / math.sqrt(5) <= 0.7 < sd / math.sqrt(4)
    # already precise enough: never fewer than 2 trials
    assert trials_for_se(0.1, 3, 0.7) == 2
    # an exact hit needs no extra trial: sd = 1.4 reaches SE 0.7 at exactly 4 trials
    assert trials_for_se(1.4 / math.sqrt(3), 3, 0.7) == 4
    assert trials_for_se(math.nan, 1, 0.7) is None
    assert trials_for_se(0.5, 0, 0.7) is None
    with pytest.raises(ValueError, match="positive"):
        trials_for_se(0.5, 3, 0.0)


def test_confidence_interval_uses_student_t_quantiles():
    # two-sided 95% quantiles of Student's t from printed tables: df = 4 -> 2.776, df = 1 -> 12.706
    low, high = confidence_interval(1.0, 0.5, 5)
    assert low == pytest.approx(1.0 - 2.776 * 0.5, abs=1e-3)
    assert high == pytest.approx(1.0 + 2.776 * 0.5, abs=1e-3)
    low, high = confidence_interval(0.0, 1.0, 2)
    assert (low, high) == pytest.approx((-12.706, 12.706), abs=1e-3)
    # 90% with df = 25: 1.708
    assert confidence_interval(0.0, 1.0, 26, level=0.90)[1] == pytest.approx(1.708, abs=1e-3)
    assert all(math.isnan(x) for x in confidence_interval(1.0, math.nan, 1))
    with pytest.raises(ValueError, match="level"):
        confidence_interval(0.0, 1.0, 5, level=95)


def test_reading_says_which_arm_is_better_only_when_the_interval_excludes_zero():
    # n = 5: half-width 2.776 * SE
    assert reading(1.5, 0.5, 5) == "treatment better"  # interval [0.11, 2.89]
    assert reading(1.3, 0.5, 5) == "no detectable difference"  # [-0.09, 2.69]: 1.3 > 2 SE would mislead
    assert reading(-1.5, 0.5, 5) == "baseline better"
    assert reading(3.0, math.nan, 1) == "too few trials"
