"""Model selection: which hparam seed and checkpoint stand for an algorithm.

The rules (training-domain validation, leave-one-domain-out, test-domain oracle) live in
:mod:`domainbed.lib.selection` and are re-exported here under DomainBed's module name.
This module adds what ``lib`` may not know, read from the algorithms' own traits through
the algorithm registry: which algorithms report an averaged model (``AVERAGED_MODEL``:
SWAD and every variant built on it), so :func:`prepare_records` can list the runs of such
algorithms that never wrote their averaged record; and which pairs of algorithms the
reports compare (:func:`paired_comparisons`). DomainBed's class names
(``IIDAccuracySelectionMethod``, ``LeaveOneOutSelectionMethod``, ``OracleSelectionMethod``)
are the same rules, for scripts written against DomainBed.
"""

from __future__ import annotations

import functools
from typing import Iterable

import pandas as pd

from domainbed.lib.query import Q
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
    TrainingDomainAutoLR,
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


@functools.cache
def _registered(algorithm: str) -> type | None:
    """The registered class ``algorithm``; None for names no longer registered (records of
    an older or foreign sweep), which therefore have no traits."""
    from domainbed.algorithms import get_algorithm_class  # torch and every algorithm: only when asked

    try:
        return get_algorithm_class(algorithm)
    except ValueError:
        return None


def _trait(algorithm: str, name: str, default: object = None) -> object:
    return getattr(_registered(algorithm), name, default)


def reports_averaged_model(algorithm: str) -> bool:
    """True when ``algorithm`` declares ``AVERAGED_MODEL`` (its reported model is an average).

    Names no longer registered count as False.
    """
    return bool(_trait(algorithm, "AVERAGED_MODEL", False))


def ftlp_variant_pairs(algorithms: Iterable[str]) -> list[tuple[str, str]]:
    """(variant, base) for each FT-LP variant in ``algorithms`` whose base is there too
    (the ``FTLP_BASE`` trait), sorted by variant."""
    present = set(algorithms)
    pairs = sorted((a, str(_trait(a, "FTLP_BASE"))) for a in present if _trait(a, "FTLP_BASE"))
    return [(t, b) for t, b in pairs if b in present]


def paired_comparisons(algorithms: Iterable[str]) -> list[tuple[str, str]]:
    """The (treatment, baseline) pairs the paired-gain tables report, among ``algorithms``.

    From the traits: each FT-LP variant against its base (``FTLP_BASE``), sorted by variant;
    then each algorithm against its control arms (``CONTROL_OF``) and the published methods
    it is measured against (``BASELINE_OF``, e.g. ERM_FTLP against MIRO), sorted. A pair is
    kept only when both algorithms are in ``algorithms``.
    """
    present = set(algorithms)
    others = sorted(
        (str(_trait(a, trait)), a) for a in present for trait in ("CONTROL_OF", "BASELINE_OF") if _trait(a, trait)
    )
    return ftlp_variant_pairs(present) + [(t, b) for t, b in others if t in present and b in present]


def prepare_records(records: pd.DataFrame | PreparedRecords) -> PreparedRecords:
    """:func:`domainbed.lib.selection.prepare_records` with the algorithms' ``AVERAGED_MODEL`` trait."""
    return _prepare_records(records, reports_averaged_model)


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


def get_test_records(records: Iterable[dict]) -> Q:
    """The records of runs with a single test env (DomainBed's helper of the same name)."""
    return Q(records).filter(lambda r: len(r["args"]["test_envs"]) == 1)
