"""Model selection under DomainBed's module name: which hparam seed and checkpoint stand for an algorithm.

The rules (training-domain validation, leave-one-domain-out, test-domain oracle, ERM++'s
auto-LR rule) live in :mod:`domainbed.results.selection` and are re-exported here, with
DomainBed's class names (``IIDAccuracySelectionMethod``, ``IIDAutoLRAccuracySelectionMethod``,
``LeaveOneOutSelectionMethod``, ``OracleSelectionMethod``: the same rules with DomainBed's
titles) and its ``get_test_records``, for scripts written against DomainBed. Nothing here
computes: besides the re-exports, it asks the algorithm registry what the results package
may not know (it knows no algorithm), which algorithms report an averaged model
(:func:`reports_averaged_model`, for :func:`prepare_records` to list the runs that never
wrote their averaged record) and which pairs the reports compare (:func:`paired_comparisons`).
"""

from __future__ import annotations

from typing import Iterable

from domainbed.results.record_dicts import get_test_records
from domainbed.results.selection import (
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
    TrainingDomainAutoLR,
    TrainingDomainValidation,
    get_selection_method,
    heldout_env_accuracy,
    n_envs_of,
    prepare_records,
    register_selection_method,
    training_domain_accuracy,
)

__all__ = [
    "AVERAGED_CKPT",
    "IIDAccuracySelectionMethod",
    "IIDAutoLRAccuracySelectionMethod",
    "LeaveOneOutSelectionMethod",
    "OracleSelectionMethod",
    "get_test_records",
    "DEFAULT_SELECTION",
    "GROUP_KEYS",
    "RESULT_COLUMNS",
    "RUN_COLUMNS",
    "SELECTION_METHODS",
    "LeaveOneDomainOut",
    "OracleSelection",
    "PreparedRecords",
    "SelectionMethod",
    "TrainingDomainAutoLR",
    "TrainingDomainValidation",
    "get_selection_method",
    "heldout_env_accuracy",
    "n_envs_of",
    "paired_comparisons",
    "prepare_records",
    "register_selection_method",
    "reports_averaged_model",
    "training_domain_accuracy",
]


def reports_averaged_model(algorithm: str) -> bool:
    """True when ``algorithm`` was registered as reporting an averaged model (or derives
    from one that was); names no longer registered count as False."""
    from domainbed.algorithms import reports_averaged_model as averaged  # torch and every algorithm: only when asked

    return averaged(algorithm)


def paired_comparisons(algorithms: Iterable[str]) -> list[tuple[str, str]]:
    """The (treatment, baseline) pairs the paired-gain tables report, among ``algorithms``:
    what the algorithms' registrations declare (:func:`domainbed.algorithms.comparisons`)."""
    from domainbed.algorithms import comparisons

    return comparisons(algorithms)


# ---------------------------------------------------------------------- DomainBed's names
# The rules under the class names DomainBed's scripts use, with DomainBed's ``name`` (the
# title its tables print). They are the rules above: ``sweep_acc``, ``hparams_accs`` and
# ``run_acc`` (SelectionMethod's DomainBed class API) give collect_results' numbers.


class IIDAccuracySelectionMethod(TrainingDomainValidation):
    """Training-domain validation under DomainBed's class name."""

    name = "training-domain validation set"


class IIDAutoLRAccuracySelectionMethod(TrainingDomainAutoLR):
    """ERM++'s auto-LR rule (training-domain validation, full-data model) under DomainBed's class name."""

    name = "auto lr training-domain validation set"


class LeaveOneOutSelectionMethod(LeaveOneDomainOut):
    """Leave-one-domain-out validation under DomainBed's class name."""

    name = "leave-one-domain-out cross-validation"


class OracleSelectionMethod(OracleSelection):
    """Test-domain validation (oracle, last checkpoint) under DomainBed's class name."""

    name = "test-domain validation set (oracle)"

