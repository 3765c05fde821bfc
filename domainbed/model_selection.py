"""Model selection: which hparam seed and checkpoint stand for an algorithm.

The rules (training-domain validation, leave-one-domain-out, test-domain oracle) live in
:mod:`domainbed.lib.selection` and are re-exported here under DomainBed's module name.
This module adds what ``lib`` may not know: which algorithms report an averaged model,
read from each algorithm's own ``AVERAGED_MODEL`` trait through the algorithm registry
(SWAD and every variant built on it), so :func:`prepare_records` can list the runs of
such algorithms that never wrote their averaged record.
"""

from __future__ import annotations

import functools

import pandas as pd

from domainbed.lib.selection import (
    AVERAGED_CKPT,
    DEFAULT_SELECTION,
    GROUP_KEYS,
    RESULT_COLUMNS,
    RUN_COLUMNS,
    SELECTION_METHODS,
    LeaveOneDomainOut,
    OracleSelection,
    PreparedRecords,
    SelectionMethod,
    TrainingDomainValidation,
    get_selection_method,
    heldout_env_accuracy,
    n_envs_of,
    register_selection_method,
    training_domain_accuracy,
)
from domainbed.lib.selection import prepare_records as _prepare_records

__all__ = [
    "AVERAGED_CKPT",
    "DEFAULT_SELECTION",
    "GROUP_KEYS",
    "RESULT_COLUMNS",
    "RUN_COLUMNS",
    "SELECTION_METHODS",
    "LeaveOneDomainOut",
    "OracleSelection",
    "PreparedRecords",
    "SelectionMethod",
    "TrainingDomainValidation",
    "get_selection_method",
    "heldout_env_accuracy",
    "is_swad_family",
    "n_envs_of",
    "prepare_records",
    "register_selection_method",
    "reports_averaged_model",
    "training_domain_accuracy",
]


@functools.cache
def reports_averaged_model(algorithm: str) -> bool:
    """True when ``algorithm`` declares ``AVERAGED_MODEL`` (its reported model is an average).

    Names no longer registered (records of an older or foreign sweep) count as False.
    """
    from domainbed.algorithms import get_algorithm_class  # torch and every algorithm: only when asked

    try:
        cls = get_algorithm_class(algorithm)
    except ValueError:
        return False
    return bool(getattr(cls, "AVERAGED_MODEL", False))


def is_swad_family(label: str) -> bool:
    """Older name kept for lib/tables.py: :func:`reports_averaged_model` of an algorithm, or
    of either side of a table's ``"A vs B"`` comparison label. Call
    :func:`reports_averaged_model` on algorithm names instead."""
    return any(reports_averaged_model(part.strip()) for part in label.split(" vs "))


def prepare_records(records: pd.DataFrame | PreparedRecords) -> PreparedRecords:
    """:func:`domainbed.lib.selection.prepare_records` with the algorithms' ``AVERAGED_MODEL`` trait."""
    return _prepare_records(records, reports_averaged_model)
