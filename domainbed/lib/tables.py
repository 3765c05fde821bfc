"""Result tables: aggregate selected runs into cells and render them (docs/design.md).

Numbers first: :func:`per_domain_stats`, :func:`dataset_average_stats` and
:func:`paired_gain_stats` turn the output of a selection rule (one row per dataset,
algorithm, test env and trial seed) into means, standard errors and counts. Every
standard error here is the population standard deviation (ddof 0) divided by √n, as
DomainBed reports it; with one trial it is 0.

Then presentation: :class:`Table` holds rows of :class:`Stat` cells and
:func:`render` prints it as plain text, Markdown or LaTeX. A cell prints as
``mean ± SE`` in percent with one decimal, ``X`` when missing. The ``n`` column gives
the largest number of trials behind any cell of the row; a cell resting on fewer trials
says so with a ``(n=k)`` suffix.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from domainbed.model_selection import is_swad_family

FORMATS = ("text", "markdown", "latex")
FTLP_SUFFIX = "_FTLP"

# Published ResNet-50 test accuracies (%) under training-domain validation (docs/design.md).
# DomainBed's ERM and CORAL are as the SWAD and MIRO papers quote them.
REFERENCE_DATASETS = ("PACS", "VLCS", "OfficeHome", "TerraIncognita", "DomainNet")
REFERENCE_RESULTS: dict[str, tuple[tuple[float, ...], float]] = {
    "ERM": ((85.5, 77.5, 66.5, 46.1, 40.9), 63.3),
    "CORAL": ((86.2, 78.8, 68.7, 47.6, 41.5), 64.5),
    "SWAD": ((88.1, 79.1, 70.6, 50.0, 46.5), 66.9),
    "MIRO": ((85.4, 79.0, 70.5, 50.4, 44.3), 65.9),
    "MIRO+SWAD": ((88.4, 79.6, 72.4, 52.9, 47.0), 68.1),
}


# ----------------------------------------------------------------------------- numbers


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


def _aggregate(df: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    cols = keys + ["mean", "se", "n"]
    if df.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    grouped = df.groupby(keys, sort=True)[value]
    out = grouped.agg(mean="mean", std=lambda s: float(np.std(s.to_numpy(dtype=float), ddof=0)), n="count")
    out["se"] = out["std"] / np.sqrt(out["n"])
    return out.reset_index()[cols]


def per_domain_stats(selected: pd.DataFrame) -> pd.DataFrame:
    """Mean, SE and n of the test accuracy over trial seeds per (dataset, algorithm, test_env)."""
    return _aggregate(selected, ["dataset", "algorithm", "test_env"], "test_acc")


def _trial_average_stats(selected: pd.DataFrame, required: dict[str, Sequence[int]]) -> pd.DataFrame:
    """Per (dataset, algorithm): for each trial seed that has every test env in
    ``required[dataset]``, the mean over those envs; then mean ± SE over such trials."""
    keys = ["dataset", "algorithm"]
    if selected.empty:
        return _aggregate(selected, keys, "trial_mean")
    wanted = {d: set(envs) for d, envs in required.items()}
    rows = selected[[env in wanted.get(d, ()) for d, env in zip(selected["dataset"], selected["test_env"])]]
    if rows.empty:
        return _aggregate(rows, keys, "trial_mean")
    per_trial = rows.groupby([*keys, "trial_seed"], as_index=False).agg(
        trial_mean=("test_acc", "mean"), n_test_envs=("test_env", "nunique")
    )
    complete = per_trial["n_test_envs"] == per_trial["dataset"].map(lambda d: len(wanted[d]))
    return _aggregate(per_trial[complete], keys, "trial_mean")


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


def ftlp_comparisons(algorithms: Sequence[str]) -> list[tuple[str, str]]:
    """(treatment, baseline) pairs: each ``B_FTLP`` against its base ``B``, then ERM_FTLP against MIRO."""
    present = set(algorithms)
    pairs = [(a, a[: -len(FTLP_SUFFIX)]) for a in sorted(present) if a.endswith(FTLP_SUFFIX)]
    pairs = [(t, b) for t, b in pairs if b in present]
    if {"ERM_FTLP", "MIRO"} <= present:
        pairs.append(("ERM_FTLP", "MIRO"))
    return pairs


def comparison_label(treatment: str, baseline: str) -> str:
    return f"{treatment} vs {baseline}"


def paired_gain_stats(selected: pd.DataFrame) -> pd.DataFrame:
    """Paired differences ``acc(treatment) - acc(baseline)`` per (dataset, comparison, test_env).

    Only trial seeds where both algorithms have a selected run are paired; the SE is that
    of the per-trial differences (population std / √n), consistent with the main tables.
    """
    keys = ["dataset", "test_env", "trial_seed"]
    parts = []
    for treatment, baseline in ftlp_comparisons(selected["algorithm"].unique().tolist() if len(selected) else []):
        t = selected[selected["algorithm"] == treatment][keys + ["test_acc"]]
        b = selected[selected["algorithm"] == baseline][keys + ["test_acc"]]
        both = t.merge(b, on=keys, suffixes=("_t", "_b"))
        parts.append(both.assign(comparison=comparison_label(treatment, baseline), diff=both["test_acc_t"] - both["test_acc_b"]))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=keys + ["comparison", "diff"])
    return _aggregate(frame, ["dataset", "comparison", "test_env"], "diff")


# ----------------------------------------------------------------------------- layout


@functools.lru_cache(maxsize=None)
def env_names(dataset: str, n_envs: int) -> tuple[str, ...]:
    """Domain names of ``dataset``: the registry's, a dataset folder's sub-folders, or env0..envN."""
    try:
        from domainbed.datasets import get_dataset_class  # imports torch: only when needed

        names = list(get_dataset_class(dataset).ENVIRONMENTS)
    except (ImportError, AttributeError, ValueError, KeyError):
        names = []
    if not names and Path(dataset).is_dir():
        # Generic image-folder datasets are named by their path; domains are sub-folders.
        names = sorted(p.name for p in Path(dataset).iterdir() if p.is_dir())
    if len(names) != n_envs:
        names = [f"env{i}" for i in range(n_envs)]
    return tuple(names)


@dataclass
class SweepLayout:
    """Which datasets, algorithms and envs a sweep has, so missing cells can print as X."""

    datasets: list[str]
    algorithms: dict[str, list[str]]
    n_envs: dict[str, int]

    @classmethod
    def from_records(cls, df: pd.DataFrame) -> "SweepLayout":
        """Layout of prepared records (which carry an ``n_envs`` column)."""
        if df.empty:
            return cls([], {}, {})
        datasets = sorted(df["dataset"].unique())
        algorithms = {d: sorted(df.loc[df["dataset"] == d, "algorithm"].unique()) for d in datasets}
        n_envs = df.groupby("dataset")["n_envs"].max().astype(int).to_dict()
        return cls(datasets, algorithms, n_envs)


# ----------------------------------------------------------------------------- tables


@dataclass
class Row:
    """One table row: a label, its cells, and the plain mean of the cell means (None if any is missing)."""

    label: str
    cells: list[Stat | None]
    avg: float | None = None
    signed: bool = False

    @classmethod
    def of(cls, label: str, cells: list[Stat | None], signed: bool = False) -> "Row":
        avg = None if not cells or any(c is None for c in cells) else float(np.mean([c.mean for c in cells]))
        return cls(label, cells, avg, signed)

    @property
    def n(self) -> int | None:
        counts = [c.n for c in self.cells if c is not None and c.n is not None]
        return max(counts) if counts else None


@dataclass
class Table:
    """A captioned table: a label column, one column per ``columns`` entry, then Avg and n."""

    key: str
    caption: str
    columns: list[str]
    rows: list[Row] = field(default_factory=list)
    label_header: str = "Algorithm"

    def row(self, label: str) -> Row:
        for r in self.rows:
            if r.label == label:
                return r
        raise KeyError(f"no row {label!r} in table {self.key!r}; rows: {[r.label for r in self.rows]}")


CELL_NOTE = (
    "Test-domain accuracy (%), mean ± SE over trial seeds (SE = population std / sqrt(n)); "
    "n = trials per cell, (n=k) marks a cell with fewer; X = missing."
)
SWAD_NOTE = "SWAD-family rows use the final averaged model."
AVERAGE_NOTE = (
    "A trial seed counts only when it has every test domain of the dataset; X = no such trial "
    "(a table of averages over the domains run follows when a sweep ran only some)."
)


def _stat_lookup(stats: pd.DataFrame, keys: list[str]) -> dict[tuple, Stat]:
    return {
        tuple(rec[k] for k in keys): Stat(float(rec["mean"]), float(rec["se"]), int(rec["n"]))
        for rec in stats.to_dict("records")
    }


def _caption(head: str, method_title: str, labels: Sequence[str]) -> str:
    parts = [f"{head} — selection: {method_title}.", CELL_NOTE]
    if any(is_swad_family(a) for a in labels):
        parts.append(SWAD_NOTE)
    return " ".join(parts)


def dataset_tables(selected: pd.DataFrame, method: str, method_title: str, layout: SweepLayout) -> list[Table]:
    """One table per dataset with any selected run: rows algorithms, columns domains."""
    lookup = _stat_lookup(per_domain_stats(selected), ["dataset", "algorithm", "test_env"])
    tables = []
    for dataset in layout.datasets:
        if not any(k[0] == dataset for k in lookup):
            continue
        n = layout.n_envs[dataset]
        algos = layout.algorithms[dataset]
        rows = [Row.of(a, [lookup.get((dataset, a, e)) for e in range(n)]) for a in algos]
        tables.append(Table(f"{method}/{dataset}", _caption(dataset, method_title, algos), list(env_names(dataset, n)), rows))
    return tables


def reference_rows(datasets: Sequence[str]) -> list[Row]:
    """Published averages as rows labelled "(reported)" for the datasets shown."""
    rows = []
    for name, (values, avg) in REFERENCE_RESULTS.items():
        published = dict(zip(REFERENCE_DATASETS, values))
        cells = [Stat(published[d] / 100) if d in published else None for d in datasets]
        row = Row.of(f"{name} (reported)", cells)
        if sorted(datasets) == sorted(REFERENCE_DATASETS):
            row.avg = avg / 100  # the paper's own average
        rows.append(row)
    return rows


def averages_table(
    selected: pd.DataFrame, method: str, method_title: str, layout: SweepLayout, reference: bool = False
) -> Table:
    """Rows algorithms, columns datasets: per-trial mean over test envs, then mean ± SE."""
    lookup = _stat_lookup(dataset_average_stats(selected, layout.n_envs), ["dataset", "algorithm"])
    algos = sorted({a for d in layout.datasets for a in layout.algorithms[d]})
    rows = [Row.of(a, [lookup.get((d, a)) for d in layout.datasets]) for a in algos]
    head = "Averages over test domains per dataset"
    caption = _caption(head, method_title, algos) + " " + AVERAGE_NOTE
    if reference and set(layout.datasets) & set(REFERENCE_DATASETS):
        rows += reference_rows(layout.datasets)
        caption += (
            " (reported) rows: published ResNet-50 results under training-domain validation "
            "(DomainBed ERM/CORAL, SWAD, MIRO, MIRO+SWAD), without SE."
        )
    elif reference:
        caption += f" No published results exist for these datasets (only {', '.join(REFERENCE_DATASETS)})."
    return Table(f"{method}/averages", caption, list(layout.datasets), rows)


def run_domains_table(selected: pd.DataFrame, method: str, method_title: str, layout: SweepLayout) -> Table | None:
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
        names = env_names(d, layout.n_envs[d])
        columns.append(f"{d} [{', '.join(names[e] for e in envs[d])} only]")
    head = "Averages over the test domains that were run (not every domain of these datasets)"
    caption = (
        _caption(head, method_title, algos) + " Per trial seed, the mean over the domains named in the column "
        "(a trial missing one of them is left out), then mean ± SE; not comparable with averages over all domains."
    )
    return Table(f"{method}/averages_run_domains", caption, columns, rows)


def gain_tables(selected: pd.DataFrame, method: str, method_title: str, layout: SweepLayout) -> list[Table]:
    """Per dataset, the paired FT-LP gains: rows comparisons, columns domains."""
    stats = paired_gain_stats(selected)
    lookup = _stat_lookup(stats, ["dataset", "comparison", "test_env"])
    tables = []
    for dataset in layout.datasets:
        comps = [comparison_label(t, b) for t, b in ftlp_comparisons(layout.algorithms[dataset])]
        comps = [c for c in comps if any(k[:2] == (dataset, c) for k in lookup)]
        if not comps:
            continue
        n = layout.n_envs[dataset]
        rows = [Row.of(c, [lookup.get((dataset, c, e)) for e in range(n)], signed=True) for c in comps]
        caption = (
            f"{dataset}: paired FT-LP gain — selection: {method_title}. "
            "'A vs B' = acc(A) − acc(B) in points, mean over trial seeds where both ran ± SE of the "
            "paired differences (population std / sqrt(n)); positive favours A. n = paired trials."
        )
        if any(is_swad_family(c) for c in comps):
            caption += " " + SWAD_NOTE
        tables.append(Table(f"{method}/gains/{dataset}", caption, list(env_names(dataset, n)), rows, "Comparison"))
    return tables


# ----------------------------------------------------------------------------- rendering

_PM = {"text": "+/-", "markdown": "±", "latex": r"$\pm$"}


def format_number(value: float, signed: bool = False) -> str:
    """A fraction as percent with one decimal; no "-0.0"."""
    text = f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"
    return "0.0" if text.lstrip("+-") == "0.0" else text


def format_stat(stat: Stat | None, fmt: str = "text", signed: bool = False, row_n: int | None = None) -> str:
    """``mean ± se`` in percent; ``X`` for None; ``(n=k)`` when fewer trials than the row's n."""
    if stat is None:
        return "X"
    text = format_number(stat.mean, signed)
    if stat.se is not None:
        text += f" {_PM[fmt]} {format_number(stat.se)}"
    if stat.n is not None and row_n is not None and stat.n < row_n:
        text += f" (n={stat.n})"
    return text


def table_cells(table: Table, fmt: str = "text") -> tuple[list[str], list[list[str]]]:
    """Header and body of ``table`` as strings."""
    header = [table.label_header, *table.columns, "Avg", "n"]
    body = []
    for row in table.rows:
        n = row.n
        cells = [format_stat(c, fmt, row.signed, n) for c in row.cells]
        avg = "X" if row.avg is None else format_number(row.avg, row.signed)
        body.append([row.label, *cells, avg, "-" if n is None else str(n)])
    return header, body


def format_grid(header: list[str], body: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces, with a rule under the header."""
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials, then typeset ±, − and — properly."""
    out = re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX_SPECIAL[m.group()], text)
    return out.replace("±", r"$\pm$").replace("−", "$-$").replace("—", "---")


def render(table: Table, fmt: str = "text") -> str:
    """``table`` as plain text, Markdown or a LaTeX ``table`` environment (needs booktabs)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; choose from {', '.join(FORMATS)}")
    header, body = table_cells(table, fmt)
    if fmt == "text":
        caption = table.caption.replace("±", "+/-").replace("−", "-").replace("—", "-")
        return f"{caption}\n\n{format_grid(header, body)}"
    if fmt == "markdown":
        lines = [f"**{table.caption}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", r"\|") for c in r) + " |" for r in body]
        return "\n".join(lines)
    lines = [
        r"\begin{table}[ht]",
        r"\centering",
        r"\caption{" + latex_escape(table.caption) + "}",
        r"\begin{tabular}{l" + "c" * (len(header) - 1) + "}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in header) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join([latex_escape(r[0]), *r[1:]]) + r" \\" for r in body]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)
