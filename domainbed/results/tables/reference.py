"""Published ResNet-50 test accuracies (%), shown as "(reported)" rows next to a sweep's.

All under training-domain validation (docs/design.md). DomainBed's ERM and CORAL
(arXiv 2007.01434) are as the SWAD (arXiv 2102.08604) and MIRO (arXiv 2203.10789)
papers quote them.
"""

from __future__ import annotations

from typing import Sequence

from domainbed.results.tables.model import Row
from domainbed.results.tables.stats import Stat

REFERENCE_DATASETS = ("PACS", "VLCS", "OfficeHome", "TerraIncognita", "DomainNet")
# name -> (accuracy per REFERENCE_DATASETS, the paper's own average)
REFERENCE_RESULTS: dict[str, tuple[tuple[float, ...], float]] = {
    "ERM": ((85.5, 77.5, 66.5, 46.1, 40.9), 63.3),
    "CORAL": ((86.2, 78.8, 68.7, 47.6, 41.5), 64.5),
    "SWAD": ((88.1, 79.1, 70.6, 50.0, 46.5), 66.9),
    "MIRO": ((85.4, 79.0, 70.5, 50.4, 44.3), 65.9),
    "MIRO+SWAD": ((88.4, 79.6, 72.4, 52.9, 47.0), 68.1),
}
REFERENCE_NOTE = (
    " (reported) rows: published ResNet-50 results under training-domain validation "
    "(DomainBed ERM/CORAL, SWAD, MIRO, MIRO+SWAD), without SE."
)


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
