"""Atomic, pickle-free files: checkpoints, records and markers survive a kill at any moment,
and model files are trusted only once they read back intact (:func:`save_verified`).

Each write passes the fault hook's points (:mod:`domainbed.training.faults`), so the tests
can kill a run between any two of its steps.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from domainbed.training.faults import FAULT_ENV, fault_point
from domainbed.training.integrity import DamagedFile, load_verified, with_digest

TMP_SUFFIX = ".tmp"


def clean_temp_files(folder: str | os.PathLike) -> list[str]:
    """Delete the temporary files of atomic writes a kill interrupted; returns their names."""
    removed = []
    for tmp in Path(folder).glob(f".*{TMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp.name)
    return sorted(removed)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (never a partial file)."""
    _atomic_write(path, "w", lambda f: f.write(text))


def _write_temp(path: Path, mode: str, write: Any) -> Path:
    """Write a fsynced temporary file beside ``path``; it is deleted if writing fails."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _atomic_write(path: str | os.PathLike, mode: str, write: Any) -> None:
    path = Path(path)
    _replace_with(_write_temp(path, mode, write), path)


def _replace_with(tmp: Path, path: Path, previous: str | os.PathLike | None = None) -> None:
    """Put the written ``tmp`` in place of ``path`` (moving the old file to ``previous`` first,
    when given) and fsync the folder; ``tmp`` is deleted if that fails."""
    try:
        fault_point(f"rename/{path.name}")
        if previous is not None and path.exists():
            os.replace(path, previous)
            fault_point(f"rotated/{path.name}")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class StorageError(OSError):
    """A file could not be written so that it reads back intact."""


def save_verified(state: Mapping[str, Any], path: str | os.PathLike, previous: str | os.PathLike | None = None,
                  attempts: int = 2) -> None:
    """``torch.save`` of a dict that trusts the file only once it has read it back intact.

    The state, with its content digest added under ``"sha256"``, goes to a fsynced temporary
    file, which is read back from the storage and checked
    (:func:`domainbed.training.integrity.load_verified`); a damaged write is written again, up to
    ``attempts`` times, then :class:`StorageError`. Only a verified file replaces ``path``;
    the file it replaces is first moved to ``previous`` when given, so the last good copy
    survives until the new one is in place.
    """
    path = Path(path)
    obj = with_digest(state)
    for attempt in range(1, attempts + 1):
        tmp = _write_temp(path, "wb", lambda f: torch.save(obj, f))
        try:
            fault_point(f"written/{path.name}", tmp)
            load_verified(tmp, from_storage=True)
            break
        except DamagedFile as e:
            tmp.unlink(missing_ok=True)
            if attempt == attempts:
                raise StorageError(
                    f"{path} could not be written intact: {e.reason}, on each of {attempts} tries. The storage "
                    "returns other bytes than were written (a failing disk or network file system?); "
                    f"{'the previous file is kept' if path.exists() else 'nothing was replaced'}."
                ) from None
            print(f"warning: {path.name} was damaged on the storage right after it was written ({e.reason}); "
                  "writing it again", file=sys.stderr)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    _replace_with(tmp, path, previous)
    fault_point(f"saved/{path.name}", path)


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one JSON line (keys sorted, DomainBed's format) and fsync it."""
    line = json.dumps(record, sort_keys=True) + "\n"
    # Under the fault hook the line goes in two writes, so a kill can leave half of it on disk.
    head = len(line) // 2 if os.environ.get(FAULT_ENV) else len(line)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line[:head])
        if head < len(line):
            f.flush()
            os.fsync(f.fileno())
            fault_point(f"append/{Path(path).name}")
            f.write(line[head:])
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete JSON line of ``path``; a partial last line (a kill mid-write) is ignored."""
    records = []
    if not os.path.exists(path):
        return records
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


def rewrite_jsonl(path: str | os.PathLike, records: list[Mapping[str, Any]]) -> None:
    """Atomically replace ``path`` with ``records``."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
