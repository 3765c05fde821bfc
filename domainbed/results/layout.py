"""A sweep's layout with the domain names the dataset registry knows.

:class:`~domainbed.results.tables.SweepLayout` is generic; :func:`sweep_layout` fills in the
domain names from the dataset registry, for ``collect_results`` and the notebook figures.
What the algorithms declared (which report an averaged model, which pairs are compared)
is passed in by the caller: the results package knows no algorithm
(``collect_results`` passes :func:`domainbed.model_selection.reports_averaged_model` and
:func:`domainbed.model_selection.paired_comparisons`).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import pandas as pd

from domainbed.results.tables import Comparison, SweepLayout


def sweep_layout(df: pd.DataFrame, averaged: Iterable[str] = (), comparisons: Sequence[Comparison] = ()) -> SweepLayout:
    """The layout of prepared records (``n_envs`` column) with domain names from
    :func:`domainbed.datasets.known_environment_names`; ``averaged`` (algorithms whose
    reported model is an average of weights) and ``comparisons`` (the pairs of the gain
    tables) as given."""
    from domainbed.datasets import known_environment_names  # torch and every dataset: only when tabulating

    datasets = sorted(df["dataset"].unique()) if len(df) else []
    return SweepLayout.from_records(
        df, domains=known_environment_names(datasets), averaged=averaged, comparisons=comparisons
    )
