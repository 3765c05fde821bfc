"""A sweep's layout with what the registries say about its names.

:class:`~domainbed.lib.tables.SweepLayout` is generic; :func:`sweep_layout` fills it from
the dataset registry (domain names) and from the algorithms' traits (which report an
averaged model, which pairs are compared), for ``collect_results`` and the notebook figures.
"""

from __future__ import annotations

import pandas as pd

from domainbed.lib.tables import SweepLayout
from domainbed.model_selection import paired_comparisons, reports_averaged_model


def sweep_layout(df: pd.DataFrame) -> SweepLayout:
    """The layout of prepared records (``n_envs`` column) with domain names from
    :func:`domainbed.datasets.known_environment_names`, the algorithms that report an
    averaged model and the pairs to compare (both from the algorithms' traits)."""
    from domainbed.datasets import known_environment_names  # torch and every dataset: only when tabulating

    datasets = sorted(df["dataset"].unique()) if len(df) else []
    algorithms = sorted(df["algorithm"].unique()) if len(df) else []
    return SweepLayout.from_records(
        df,
        domains=known_environment_names(datasets),
        averaged=[a for a in algorithms if reports_averaged_model(a)],
        comparisons=paired_comparisons(algorithms),
    )
