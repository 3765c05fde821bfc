"""Atomic, pickle-free files: checkpoints, records and markers survive a kill at any moment,
and model files are trusted only once they read back intact (:func:`save_verified`).

Also the fault-injection test hook :func:`fault_point` (README.md, "Failure modes"): with
``DOMAINBED_FAULT`` unset it is one environment lookup and does nothing.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from domainbed.lib.integrity import DamagedFile, load_verified, with_digest

FAULT_ENV = "DOMAINBED_FAULT"
STOP_NOTICE = f"{FAULT_ENV}: stopped at"
TMP_SUFFIX = ".tmp"
_fault_hits: dict[str, int] = {}


class InjectedFault(RuntimeError):
    """Raised by :func:`fault_point` with the ``raise`` action."""


def fault_point(name: str, target: str | os.PathLike | None = None) -> None:
    """Test hook: fail here when ``DOMAINBED_FAULT`` names this point.

    ``DOMAINBED_FAULT`` holds one or more comma-separated ``<point>:<n>[:<action>]``. On
    the ``n``-th time (1-based, counted per process) the point is reached, ``action``
    ``kill`` (the default) sends SIGKILL to this process, so nothing after it runs;
    ``term`` sends SIGTERM (a pre-emption notice); ``raise`` raises :class:`InjectedFault`
    (an ordinary crash); ``stop`` prints ``STOP_NOTICE`` and the point on stderr, then sends
    SIGSTOP, so a test can act (start a second process, send a signal) while this one is
    frozen, then SIGCONT it; ``truncate`` and ``flip`` damage ``target``, the file the
    point is about (:func:`damage_file`). Points:
    ``locked``, ``step``, ``eval``, ``after_record``, ``after_checkpoint``, ``before_done``,
    ``after_done`` (train.py), ``append/<file>`` (half a JSON line is on disk),
    ``rename/<file>`` (the temporary file is written, not yet renamed), and for verified
    saves ``written/<file>`` (temporary file written, not yet verified), ``rotated/<file>``
    (the previous file moved aside, the new one not yet in place) and ``saved/<file>``
    (the new file in place).
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    mine = [part.split(":")[1:] for part in spec.split(",") if part.split(":")[0] == name]
    if not mine:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    for fields in mine:
        count, action = (fields + ["", ""])[:2]
        if _fault_hits[name] == int(count or 1):
            _act(name, int(count or 1), action, target)


def _act(name: str, count: int, action: str, target: str | os.PathLike | None) -> None:
    if action in ("", "kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    elif action == "stop":
        # Announced first, so that a test can tell this stop from one sent by a job scheduler.
        print(f"{STOP_NOTICE} {name} (occurrence {count})", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
    elif action == "raise":
        raise InjectedFault(f"fault injected at {name} (occurrence {count}) by {FAULT_ENV}")
    elif action in ("truncate", "flip"):
        if target is None:
            raise ValueError(f"{FAULT_ENV}: point {name} has no file to {action}")
        damage_file(target, action)
    else:
        raise ValueError(f"{FAULT_ENV}: unknown action {action!r} at {name}; "
                         "use kill, term, stop, raise, truncate or flip")


DAMAGE_BLOCK = 4096


def damage_file(path: str | os.PathLike, how: str) -> None:
    """Damage ``path`` in place as storage does: ``truncate`` keeps its first half (a partial
    copy, a full quota); ``flip`` inverts the 4 KiB block in its middle (a bad block, bit rot)."""
    size = os.path.getsize(path)
    if how == "truncate":
        os.truncate(path, size // 2)
        return
    if how != "flip":
        raise ValueError(f"unknown damage {how!r}; use truncate or flip")
    start = max(0, size // 2 - DAMAGE_BLOCK // 2)
    with open(path, "r+b") as f:
        f.seek(start)
        block = f.read(DAMAGE_BLOCK)
        f.seek(start)
        f.write(bytes(b ^ 0xFF for b in block))
        f.flush()
        os.fsync(f.fileno())


def reset_faults() -> None:
    """Restart the occurrence counts of :func:`fault_point` (one training run = one count)."""
    _fault_hits.clear()


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


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A reader therefore sees either the old complete file or the new complete file.
    """
    _atomic_write(path, "wb", lambda f: torch.save(obj, f))


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
    tmp = _write_temp(path, mode, write)
    try:
        fault_point(f"rename/{path.name}")
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
    (:func:`domainbed.lib.integrity.load_verified`); a damaged write is written again, up to
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
    fault_point(f"saved/{path.name}", path)


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a file written by :func:`atomic_torch_save` or :func:`save_verified`, never running
    pickled code; raises ``DamagedFile`` or ``UnsafeFile`` (both ``ValueError``)."""
    return load_verified(path, map_location)


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
