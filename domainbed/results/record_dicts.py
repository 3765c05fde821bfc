"""A sweep's records as a list of dicts (a :class:`~domainbed.results.query.Q`), as DomainBed reads them.

For users' scripts and notebooks written against DomainBed's ``domainbed.lib.reporting``
(which re-exports these two functions)::

    records = reporting.load_records(SWEEP_DIR)
    for group in reporting.get_grouped_records(records):
        acc = model_selection.IIDAccuracySelectionMethod.sweep_acc(group["records"])

The files are found and parsed by :mod:`domainbed.results.records` (what ``collect_results``
reads). One difference from DomainBed, on purpose: jobs without a ``done`` file (still
running, or crashed) are skipped unless ``include_incomplete=True``, as ``collect_results``
skips them, so a half-written job does not enter a table. Job folders are found at any
depth below ``path``, not only one level down.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from domainbed.results.query import Q
from domainbed.results.records import DONE_FILE, RESULTS_FILE, iter_job_dirs, read_results


def load_records(path: str | os.PathLike[str], include_incomplete: bool = False) -> Q:
    """Every record (one dict per checkpoint, as written to ``results.jsonl``) of the sweep
    under ``path``. Unreadable files and lines that are not valid JSON are skipped."""
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"sweep directory {str(root)!r} does not exist or is not a directory")
    records: list[Any] = []
    for job_dir, names in iter_job_dirs(root):
        if RESULTS_FILE not in names or (DONE_FILE not in names and not include_incomplete):
            continue
        try:
            parsed, _ = read_results(job_dir / RESULTS_FILE)
        except (OSError, UnicodeDecodeError):
            continue
        records.extend(record for _, record in parsed if isinstance(record, dict))
    return Q(records)


def get_grouped_records(records: Iterable[dict[str, Any]]) -> Q:
    """One dict per (trial_seed, dataset, algorithm, test_env): those four keys and
    ``records``, a ``Q`` of the records whose ``args.test_envs`` contain that test env (so a
    record of a run with two test envs is in two groups). Groups come in order of first
    appearance."""
    groups: dict[tuple[Any, ...], Q] = {}
    for record in records:
        args = record["args"]
        for test_env in args["test_envs"]:
            key = (args["trial_seed"], args["dataset"], args["algorithm"], test_env)
            groups.setdefault(key, Q())._append(record)
    return Q(
        {"trial_seed": t, "dataset": d, "algorithm": a, "test_env": e, "records": group}
        for (t, d, a, e), group in groups.items()
    )


def get_test_records(records: Iterable[dict[str, Any]]) -> Q:
    """The records of runs with a single test env (DomainBed's ``model_selection.get_test_records``)."""
    return Q(records).filter(lambda r: len(r["args"]["test_envs"]) == 1)
