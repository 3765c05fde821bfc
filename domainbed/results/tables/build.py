"""Build the result tables of one selection rule from its selected runs.

Per dataset: accuracy per domain (:func:`dataset_tables`) and the paired gains of the
caller's comparisons (:func:`gain_tables`); across datasets: the averages
(:func:`averages_table`, and :func:`run_domains_table` when a sweep ran only some
domains). A cell prints as ``mean ± SE`` in percent; the ``n`` column gives the largest
number of trials behind any cell of the row, and a cell resting on fewer says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

from domainbed.results.paired_gains import comparison_name
from domainbed.results.standard_error import ACCURACY_SE, GAIN_SE
from domainbed.results.tables.metric import ACC, TableMetric
from domainbed.results.tables.model import Row, SweepLayout, Table
from domainbed.results.tables.reference import REFERENCE_DATASETS, REFERENCE_NOTE, reference_rows
from domainbed.results.tables.stats import (
    Stat,
    dataset_average_stats,
    paired_gain_stats,
    per_domain_stats,
    run_domains,
    run_domains_stats,
)

CELL_NOTE_TAIL = (
    f", mean ± SE over trial seeds ({ACCURACY_SE}); "
    "n = trials per cell, (n=k) marks a cell with fewer; X = missing."
)
CELL_NOTE = ACC.title + CELL_NOTE_TAIL

AVERAGE_NOTE = (
    "A trial seed counts only when it has every test domain of the dataset; X = no such trial "
    "(a table of averages over the domains run follows when a sweep ran only some)."
)


def averaged_model_note(averaged: Iterable[str]) -> str:
    """The caption sentence for rows whose reported model is an average of weights."""
    return f"{', '.join(sorted(averaged))} rows use the final averaged model."


def _stat_lookup(stats: pd.DataFrame, keys: list[str]) -> dict[tuple, Stat]:
    """Cells by ``keys``; an SE that is undefined (a paired gain of one trial) is left out."""
    cells = {}
    for rec in stats.to_dict("records"):
        se = float(rec["se"])
        cells[tuple(rec[k] for k in keys)] = Stat(float(rec["mean"]), None if math.isnan(se) else se, int(rec["n"]))
    return cells


def _caption(head: str, method_title: str, layout: SweepLayout, algorithms: list[str], metric: TableMetric = ACC) -> str:
    parts = [f"{head} — selection: {method_title}.", metric.title + CELL_NOTE_TAIL]
    if layout.averaged & set(algorithms):
        parts.append(averaged_model_note(layout.averaged & set(algorithms)))
    return " ".join(parts)


def _fmt(metric: TableMetric) -> dict[str, float | int]:
    return {"scale": metric.scale, "decimals": metric.decimals}


def dataset_tables(selected: pd.DataFrame, method: str, method_title: str, layout: SweepLayout,
                   metric: TableMetric = ACC) -> list[Table]:
    """One table per dataset with any selected run: rows algorithms, columns domains."""
    lookup = _stat_lookup(per_domain_stats(selected), ["dataset", "algorithm", "test_env"])
    tables = []
    for dataset in layout.datasets:
        if not any(k[0] == dataset for k in lookup):
            continue
        n = layout.n_envs[dataset]
        algos = layout.algorithms[dataset]
        rows = [Row.of(a, [lookup.get((dataset, a, e)) for e in range(n)]) for a in algos]
        caption = _caption(dataset, method_title, layout, algos, metric)
        tables.append(Table(f"{method}/{dataset}", caption, list(layout.domain_names(dataset)), rows, **_fmt(metric)))
    return tables


def averages_table(
    selected: pd.DataFrame, method: str, method_title: str, layout: SweepLayout, reference: bool = False,
    metric: TableMetric = ACC,
) -> Table:
    """Rows algorithms, columns datasets: per-trial mean over test envs, then mean ± SE."""
    lookup = _stat_lookup(dataset_average_stats(selected, layout.n_envs), ["dataset", "algorithm"])
    algos = sorted({a for d in layout.datasets for a in layout.algorithms[d]})
    rows = [Row.of(a, [lookup.get((d, a)) for d in layout.datasets]) for a in algos]
    head = "Averages over test domains per dataset"
    caption = _caption(head, method_title, layout, algos, metric) + " " + AVERAGE_NOTE
    if reference and set(layout.datasets) & set(REFERENCE_DATASETS):
        rows += reference_rows(layout.datasets)
        caption += REFERENCE_NOTE
    elif reference:
        caption += f" No published results exist for these datasets (only {', '.join(REFERENCE_DATASETS)})."
    return Table(f"{method}/averages", caption, list(layout.datasets), rows, **_fmt(metric))


def run_domains_table(selected: pd.DataFrame, method: str, method_title: str, layout: SweepLayout,
                      metric: TableMetric = ACC) -> Table | None:
    """For a sweep that ran only some test domains of a dataset: per-trial means over those
    domains, labelled with them (None when every dataset's domains were all run)."""
    envs = run_domains(selected, layout.n_envs) if not selected.empty else {}
    if not envs:
        return None
    datasets = [d for d in layout.datasets if d in envs]
    lookup = _stat_lookup(run_domains_stats(selected, envs), ["dataset", "algorithm"])
    algos = sorted({a for d in datasets for a in layout.algorithms[d]})
    rows = [Row.of(a, [lookup.get((d, a)) for d in datasets]) for a in algos]
    columns = []
    for d in datasets:
        names = layout.domain_names(d)
        columns.append(f"{d} [{', '.join(names[e] for e in envs[d])} only]")
    head = "Averages over the test domains that were run (not every domain of these datasets)"
    caption = (
        _caption(head, method_title, layout, algos, metric) + " Per trial seed, the mean over the domains named in the column "
        "(a trial missing one of them is left out), then mean ± SE; not comparable with averages over all domains."
    )
    return Table(f"{method}/averages_run_domains", caption, columns, rows, **_fmt(metric))


def _gain_note(metric: TableMetric) -> str:
    if metric.name == "acc":
        return "'A − B' = acc(A) − acc(B) in points"
    return f"'A − B' = {metric.name}(A) − {metric.name}(B) in {metric.unit}"


def gain_tables(selected: pd.DataFrame, method: str, method_title: str, layout: SweepLayout,
                metric: TableMetric = ACC) -> list[Table]:
    """Per dataset, the paired gains of ``layout.comparisons``: rows comparisons, columns domains."""
    lookup = _stat_lookup(paired_gain_stats(selected, layout.comparisons), ["dataset", "comparison", "test_env"])
    tables = []
    for dataset in layout.datasets:
        pairs = [(t, b) for t, b in layout.comparisons_in(dataset) if any(k[:2] == (dataset, comparison_name(t, b)) for k in lookup)]
        if not pairs:
            continue
        n = layout.n_envs[dataset]
        labels = [comparison_name(t, b) for t, b in pairs]
        rows = [Row.of(c, [lookup.get((dataset, c, e)) for e in range(n)], signed=True) for c in labels]
        caption = (
            f"{dataset}: paired FT-LP gain — selection: {method_title}. "
            f"{_gain_note(metric)}, mean over trial seeds where both ran ± SE of the "
            f"paired differences ({GAIN_SE}); "
            f"{'negative' if metric.lower_is_better else 'positive'} favours A. n = paired trials."
        )
        if layout.averaged & {a for pair in pairs for a in pair}:
            caption += " " + averaged_model_note(layout.averaged & {a for pair in pairs for a in pair})
        tables.append(Table(f"{method}/gains/{dataset}", caption, list(layout.domain_names(dataset)), rows, "Comparison",
                            **_fmt(metric)))
    return tables
