"""The table model: what a sweep holds (:class:`SweepLayout`) and the tables built from it.

A :class:`Table` is a caption, column names and :class:`Row` objects whose cells are
:class:`~domainbed.results.tables.stats.Stat` (or None, printed ``X``). Nothing here knows a
dataset or an algorithm by name: domain names, the algorithms that report an averaged
model and the pairs to compare come from the caller (``scripts.collect_results`` reads
them from the dataset and algorithm registries).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from domainbed.results.tables.stats import Comparison, Stat


def env_names(dataset: str, n_envs: int, known: Sequence[str] | None = None) -> tuple[str, ...]:
    """Domain names of ``dataset``: ``known`` (the caller's names) when it has ``n_envs``
    of them, else ``env0`` .. ``env{n_envs-1}``."""
    if known is not None and len(known) == n_envs:
        return tuple(str(name) for name in known)
    return tuple(f"env{i}" for i in range(n_envs))


@dataclass
class SweepLayout:
    """Which datasets, algorithms and envs a sweep has, so missing cells can print as X,
    plus what the caller knows about them.

    ``domains``: domain names per dataset (datasets left out are named ``env0``, ...).
    ``averaged``: algorithms whose reported model is an average of weights (their
    captions say so). ``comparisons``: the (treatment, baseline) pairs of the gain tables,
    in the order they are printed.
    """

    datasets: list[str]
    algorithms: dict[str, list[str]]
    n_envs: dict[str, int]
    domains: Mapping[str, Sequence[str]] = field(default_factory=dict)
    averaged: frozenset[str] = frozenset()
    comparisons: Sequence[Comparison] = ()

    @classmethod
    def from_records(
        cls,
        df: pd.DataFrame,
        domains: Mapping[str, Sequence[str]] | None = None,
        averaged: Iterable[str] = (),
        comparisons: Sequence[Comparison] = (),
    ) -> "SweepLayout":
        """Layout of prepared records (which carry an ``n_envs`` column)."""
        extra = {"domains": dict(domains or {}), "averaged": frozenset(averaged), "comparisons": tuple(comparisons)}
        if df.empty:
            return cls([], {}, {}, **extra)
        datasets = sorted(df["dataset"].unique())
        algorithms = {d: sorted(df.loc[df["dataset"] == d, "algorithm"].unique()) for d in datasets}
        n_envs = df.groupby("dataset")["n_envs"].max().astype(int).to_dict()
        return cls(datasets, algorithms, n_envs, **extra)

    def domain_names(self, dataset: str) -> tuple[str, ...]:
        return env_names(dataset, self.n_envs[dataset], self.domains.get(dataset))

    def comparisons_in(self, dataset: str) -> list[Comparison]:
        """The comparisons whose two algorithms both ran on ``dataset``."""
        present = set(self.algorithms[dataset])
        return [(t, b) for t, b in self.comparisons if t in present and b in present]


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
    # Cells print as value * scale with this many decimals (accuracy: percent, one decimal).
    scale: float = 100.0
    decimals: int = 1

    def row(self, label: str) -> Row:
        for r in self.rows:
            if r.label == label:
                return r
        raise KeyError(f"no row {label!r} in table {self.key!r}; rows: {[r.label for r in self.rows]}")
