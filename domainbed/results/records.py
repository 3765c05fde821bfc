"""Load the ``results.jsonl`` files of a sweep into one pandas DataFrame.

A sweep directory holds one output directory per training job (docs/design.md §7). Each job
appends one JSON object per checkpoint to ``results.jsonl`` and writes a ``done`` file
last, so a job without ``done`` is still running or crashed. Sweeps are routinely read
while jobs are running or after some were killed, so nothing here raises on a partial
sweep: unfinished jobs, truncated lines and unreadable files are skipped and counted,
and :meth:`RecordLoad.summarise` says how many.

The frame has one row per record. Every top-level key of the record is a column
(``step``, ``env0_in_acc``, ``loss``, ...; ``hparams`` and ``args`` stay dicts), and
the arguments that identify a run are flattened into columns of their own:

``dataset``, ``algorithm``, ``test_envs`` (sorted tuple of ints), ``n_test_envs``,
``test_env`` (the test env of single-test-env runs, ``<NA>`` otherwise),
``hparams_seed``, ``trial_seed``, ``seed``, ``output_dir`` (the directory the file was
found in, which survives a sweep being moved, unlike ``args["output_dir"]``),
``averaged`` (True only for the final averaged-model record of SWAD-family runs) and
``record_index`` (line order within the file).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd

RESULTS_FILE = "results.jsonl"
DONE_FILE = "done"

# Arguments without which a record cannot be placed in a table.
REQUIRED_ARGS = ("dataset", "algorithm", "test_envs", "hparams_seed", "trial_seed")

# Columns every loaded frame has, even an empty one, so callers can filter safely.
ID_COLUMNS = [
    "dataset",
    "algorithm",
    "test_envs",
    "n_test_envs",
    "test_env",
    "hparams_seed",
    "trial_seed",
    "seed",
    "output_dir",
    "averaged",
    "record_index",
    "step",
]


def env_indices(columns: Iterable[object]) -> list[int]:
    """The environment indices ``i`` that have an ``env{i}_in_acc`` column, sorted."""
    found = []
    for col in columns:
        name = str(col)
        if name.startswith("env") and name.endswith("_in_acc") and name[3:-7].isdigit():
            found.append(int(name[3:-7]))
    return sorted(found)


@dataclass
class RecordLoad:
    """The records of a sweep plus what had to be skipped to read them."""

    df: pd.DataFrame
    sweep_dir: str
    n_jobs: int = 0
    n_incomplete: int = 0
    n_truncated_lines: int = 0
    n_unreadable: int = 0
    n_malformed: int = 0
    include_incomplete: bool = False
    unreadable_files: list[str] = field(default_factory=list)

    @property
    def n_records(self) -> int:
        return len(self.df)

    def summarise(self) -> str:
        """Human-readable counts of what was loaded and what was skipped."""
        lines = [f"Loaded {self.n_records} records from {self.n_jobs} jobs under {self.sweep_dir}."]
        if self.include_incomplete:
            lines.append(f"Included {self.n_incomplete} incomplete jobs (no '{DONE_FILE}' file).")
        else:
            lines.append(f"Skipped {self.n_incomplete} incomplete jobs (no '{DONE_FILE}' file).")
        lines.append(f"Skipped {self.n_truncated_lines} truncated or invalid JSON lines.")
        if self.n_unreadable:
            shown = ", ".join(self.unreadable_files[:3])
            lines.append(f"Skipped {self.n_unreadable} unreadable jobs ({shown}{', ...' if self.n_unreadable > 3 else ''}).")
        if self.n_malformed:
            lines.append(
                f"Skipped {self.n_malformed} records without 'step' or the args {', '.join(REQUIRED_ARGS)}."
            )
        return "\n".join(lines)


def _is_job_dir(names: set[str]) -> bool:
    # out.txt + err.txt alone marks a job that died before its first checkpoint.
    return RESULTS_FILE in names or DONE_FILE in names or {"out.txt", "err.txt"} <= names


def iter_job_dirs(sweep_dir: Path) -> Iterator[tuple[Path, set[str]]]:
    """Every job directory below ``sweep_dir`` (itself included), in sorted order."""
    for root, dirnames, filenames in os.walk(sweep_dir):
        dirnames.sort()
        names = set(filenames)
        if _is_job_dir(names):
            # A job's own sub-folders (checkpoints, logs) are not further jobs.
            dirnames[:] = []
            yield Path(root), names


def _row(record: dict[str, Any], output_dir: str, index: int) -> dict[str, Any] | None:
    """Flatten one record, or None when it lacks what a table needs."""
    args = record.get("args")
    if not isinstance(args, dict) or "step" not in record or any(k not in args for k in REQUIRED_ARGS):
        return None
    test_envs = args["test_envs"]
    if isinstance(test_envs, int):
        test_envs = [test_envs]
    try:
        envs = tuple(sorted(int(e) for e in test_envs))
        hparams_seed, trial_seed = int(args["hparams_seed"]), int(args["trial_seed"])
    except (TypeError, ValueError):
        return None
    row = dict(record)
    row.update(
        dataset=str(args["dataset"]),
        algorithm=str(args["algorithm"]),
        test_envs=envs,
        n_test_envs=len(envs),
        test_env=envs[0] if len(envs) == 1 else None,
        hparams_seed=hparams_seed,
        trial_seed=trial_seed,
        seed=args.get("seed"),
        output_dir=output_dir,
        averaged=bool(record.get("averaged", False)),
        record_index=index,
    )
    return row


def read_results(path: Path) -> tuple[list[tuple[int, Any]], int]:
    """The JSON values of one ``results.jsonl`` with their line numbers, and how many
    non-blank lines were not valid JSON (typically the last line of a job killed
    mid-write). Read errors (``OSError``, ``UnicodeDecodeError``) propagate."""
    parsed: list[tuple[int, Any]] = []
    n_bad = 0
    for index, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            parsed.append((index, json.loads(line)))
        except json.JSONDecodeError:
            n_bad += 1
    return parsed, n_bad


def records_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """The frame :func:`load_records` builds, from record dicts already in memory (e.g. a
    DomainBed ``Q`` of records). A record's run is its ``args["output_dir"]``, or, when the
    record has none, its whole ``args``; records without what a table needs are left out."""
    rows = []
    for index, record in enumerate(records):
        args = record.get("args") if isinstance(record, dict) else None
        if not isinstance(args, dict):
            continue
        run = args.get("output_dir") or json.dumps(args, sort_keys=True, default=str)
        row = _row(record, str(run), index)
        if row is not None:
            rows.append(row)
    return _frame(rows)


def load_records(sweep_dir: str | os.PathLike[str], include_incomplete: bool = False) -> RecordLoad:
    """Read every ``results.jsonl`` below ``sweep_dir`` into a :class:`RecordLoad`.

    Jobs without a ``done`` file are counted in ``n_incomplete`` and skipped unless
    ``include_incomplete``. Lines that are not valid JSON (typically the last line of a
    job killed mid-write) are skipped and counted in ``n_truncated_lines``; files that
    cannot be read, and finished jobs without results, count in ``n_unreadable``.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise ValueError(f"sweep directory {str(root)!r} does not exist or is not a directory")
    load = RecordLoad(df=pd.DataFrame(), sweep_dir=str(root), include_incomplete=include_incomplete)
    rows: list[dict[str, Any]] = []
    for job_dir, names in iter_job_dirs(root):
        done = DONE_FILE in names
        if not done:
            load.n_incomplete += 1
            if not include_incomplete:
                continue
        if RESULTS_FILE not in names:
            if done:
                load.n_unreadable += 1
                load.unreadable_files.append(str(job_dir))
            continue
        try:
            parsed, n_bad = read_results(job_dir / RESULTS_FILE)
        except (OSError, UnicodeDecodeError):
            load.n_unreadable += 1
            load.unreadable_files.append(str(job_dir / RESULTS_FILE))
            continue
        load.n_jobs += 1
        load.n_truncated_lines += n_bad
        for index, record in parsed:
            row = _row(record, str(job_dir), index) if isinstance(record, dict) else None
            if row is None:
                load.n_malformed += 1
                continue
            rows.append(row)
    load.df = _frame(rows)
    return load


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows) if rows else pd.DataFrame(columns=ID_COLUMNS)
    for col in ID_COLUMNS:
        if col not in df.columns:
            df[col] = pd.Series(dtype=object)
    df["test_env"] = df["test_env"].astype("Int64")
    for col in ("n_test_envs", "hparams_seed", "trial_seed", "record_index", "step"):
        df[col] = df[col].astype("int64")
    df["averaged"] = df["averaged"].astype(bool)
    return df
