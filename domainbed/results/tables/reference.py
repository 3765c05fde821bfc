"""Published ResNet-50 test accuracies (%), shown as "(reported)" rows next to a sweep's.

The numbers are data, kept with their sources in ``published.json`` beside this module
(all under training-domain validation, docs/design.md); this module turns them into rows.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Sequence

from domainbed.results.tables.model import Row
from domainbed.results.tables.stats import Stat


def _load_published() -> dict:
    # Package data, so that an installed wheel has it too (setup.py's package_data).
    return json.loads(resources.files(__package__).joinpath("published.json").read_text(encoding="utf-8"))


_PUBLISHED = _load_published()
REFERENCE_DATASETS: tuple[str, ...] = tuple(_PUBLISHED["datasets"])
# name -> (accuracy per REFERENCE_DATASETS, the paper's own average)
REFERENCE_RESULTS: dict[str, tuple[tuple[float, ...], float]] = {
    row["name"]: (tuple(row["accuracy"]), row["average"]) for row in _PUBLISHED["rows"]
}
REFERENCE_NOTE: str = _PUBLISHED["note"]


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
