"""Which number the result tables show: accuracy (DomainBed's), or the test domain's NLL or ECE.

The selection rules always choose by accuracy (their validation scores are accuracies); a
metric only changes the number reported at the chosen checkpoint: the test env's ``in``
split ``env{t}_in_{metric}`` of the same record (:func:`with_test_metric`). Accuracy and
ECE print in percent with one decimal, NLL in nats with three.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class TableMetric:
    """A reported metric: its record-key suffix, caption words, print scale and direction."""

    name: str
    title: str
    scale: float = 100.0
    decimals: int = 1
    lower_is_better: bool = False
    unit: str = "points"


ACC = TableMetric("acc", "Test-domain accuracy (%)")
TABLE_METRICS: dict[str, TableMetric] = {
    "acc": ACC,
    "nll": TableMetric("nll", "Test-domain negative log-likelihood (nats; lower is better)", 1.0, 3, True, "nats"),
    "ece": TableMetric("ece", "Test-domain expected calibration error (%, 15 equal-width confidence bins; lower is better)",
                       lower_is_better=True),
}


def get_table_metric(name: str) -> TableMetric:
    try:
        return TABLE_METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; choose from {', '.join(TABLE_METRICS)}") from None


def with_test_metric(selected: pd.DataFrame, records: pd.DataFrame, metric: TableMetric) -> pd.DataFrame:
    """``selected`` (one row per chosen checkpoint) with ``test_acc`` replaced by the test
    env's ``in`` value of ``metric`` in the same record; rows whose record lacks it
    (written before calibration was recorded) are dropped."""
    if metric.name == "acc" or selected.empty:
        return selected
    keys = ["output_dir", "step", "averaged"]
    values = np.full(len(records), np.nan)
    envs = records["test_env"]
    for env in envs.dropna().unique():
        col = f"env{int(env)}_in_{metric.name}"
        if col in records.columns:
            rows = (envs == env).fillna(False).to_numpy(dtype=bool)
            values[rows] = records.loc[rows, col].to_numpy(dtype=float)
    lookup = records[keys].assign(_value=values).drop_duplicates(keys, keep="last")
    merged = selected.merge(lookup, on=keys, how="left")
    merged["test_acc"] = merged.pop("_value")
    return merged.dropna(subset=["test_acc"]).reset_index(drop=True)
