"""Atomic, pickle-free files: checkpoints, records and markers survive a kill at any moment.

Also the fault-injection test hook :func:`fault_point` (README.md, "Failure modes"): with
``DOMAINBED_FAULT`` unset it is one environment lookup and does nothing.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

FAULT_ENV = "DOMAINBED_FAULT"
TMP_SUFFIX = ".tmp"
_fault_hits: dict[str, int] = {}


class InjectedFault(RuntimeError):
    """Raised by :func:`fault_point` with the ``raise`` action."""


def fault_point(name: str) -> None:
    """Test hook: fail here when ``DOMAINBED_FAULT=<name>:<n>[:<action>]`` names this point.

    On the ``n``-th time (1-based, counted per process) the point is reached, ``action``
    ``kill`` (the default) sends SIGKILL to this process, so nothing after it runs;
    ``term`` sends SIGTERM (a pre-emption notice); ``raise`` raises :class:`InjectedFault`
    (an ordinary crash). Points: ``step``, ``eval``, ``after_record``, ``after_checkpoint``,
    ``before_done``, ``after_done`` (train.py), ``append/<file>`` (half a JSON line is on
    disk) and ``rename/<file>`` (the temporary file is written, not yet renamed).
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, _, rest = spec.partition(":")
    if point != name:
        return
    count, _, action = rest.partition(":")
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] != int(count or 1):
        return
    if action in ("", "kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    elif action == "raise":
        raise InjectedFault(f"fault injected at {name} (occurrence {count}) by {FAULT_ENV}")
    else:
        raise ValueError(f"{FAULT_ENV}={spec!r}: unknown action {action!r}; use kill, term or raise")


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


def _atomic_write(path: str | os.PathLike, mode: str, write: Any) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        fault_point(f"rename/{path.name}")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a file written by :func:`atomic_torch_save`, never running pickled code."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(
            f"refusing to load {path}: it is not a plain tensor file ({type(e).__name__}). "
            "Files that need unrestricted pickle (e.g. DomainBed's model.pkl) are not loaded, since "
            "unpickling can run arbitrary code; re-save the state dict with torch.save(model.state_dict())."
        ) from None


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
