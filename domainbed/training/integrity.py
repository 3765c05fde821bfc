"""Is a saved file intact? Damaged files (storage faults) told apart from unsafe ones (pickle).

Two checks, because ``torch.load`` itself checks nothing (a flipped byte in a tensor loads
silently):

* the archive: every ``.pt`` file is PyTorch's zip archive, whose members each carry a
  CRC-32; :func:`verify_archive` reads them all back and checks them, which catches a
  truncated copy, a file cut short by a full quota, zeroed blocks or bit rot in the data;
* the content: files written by :func:`domainbed.training.atomic_files.save_verified` hold under
  ``"sha256"`` a digest of everything else in them (:func:`content_digest`), checked against
  what ``torch.load`` actually returned. It covers what the CRCs do not: the zip metadata,
  which PyTorch's zip reader does not read exactly as Python's does (a member flagged as a
  directory loads without error from memory that was never filled), and an archive that is
  consistent but not what was saved.

A file that passes and still needs unrestricted pickle is *unsafe*, not damaged: it was
written by something else, and it is refused, never run.
"""

from __future__ import annotations

import hashlib
import os
import pickle  # noqa: TID251 -- only for its exception type; nothing is unpickled with it
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from domainbed.lib.errors import UserError

DIGEST_KEY = "sha256"
DAMAGED_SUFFIX = ".damaged"
# PyTorch's pre-1.6 format: a pickle stream that starts with this magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


class DamagedFile(ValueError):
    """The file's bytes are not those that were written (truncated, overwritten, bit rot)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path} is damaged ({reason})")


class UnsafeFile(UserError):
    """The file is intact but loading it would need unrestricted pickle."""


# ----------------------------------------------------------------------------- content digest


def _feed(h: Any, obj: Any) -> None:
    """Hash ``obj`` with its type and structure, so that no two different objects collide by layout."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, Mapping):
        h.update(f"M{len(obj)}".encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__[0]}{len(obj)}".encode())
        for value in obj:
            _feed(h, value)
    elif isinstance(obj, float):
        h.update(f"f{obj.hex()};".encode())
    elif isinstance(obj, (bool, int, str, type(None))):
        text = repr(obj)
        h.update(f"{type(obj).__name__[0]}{len(text)}:{text}".encode())
    else:  # torch.dtype, torch.Size, ...: what weights_only loading allows has a stable repr
        text = f"{type(obj).__name__}:{obj!r}"
        h.update(f"o{len(text)}:{text}".encode())


def content_digest(obj: Any) -> str:
    """SHA-256 of a state made of tensors, containers and plain values (key order included)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def to_cpu(obj: Any) -> Any:
    """A copy of ``obj`` with every tensor on the CPU (one device copy, then hashed and saved)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        items = [(k, to_cpu(v)) for k, v in obj.items()]
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
    if isinstance(obj, list):
        return [to_cpu(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(to_cpu(v) for v in obj)
    return obj


def with_digest(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` on the CPU plus its :func:`content_digest` under ``"sha256"``."""
    if DIGEST_KEY in state:
        raise ValueError(f"the state already has a {DIGEST_KEY!r} entry")
    cpu = {k: to_cpu(v) for k, v in state.items()}
    return {**cpu, DIGEST_KEY: content_digest(cpu)}


# ----------------------------------------------------------------------------- checks


def is_legacy_torch_file(path: str | os.PathLike) -> bool:
    with open(path, "rb") as f:
        return f.read(len(_LEGACY_MAGIC)) == _LEGACY_MAGIC


def _drop_cached_pages(path: Path) -> None:
    """Ask the kernel to forget its cached copy, so the next read comes from the storage."""
    if not hasattr(os, "posix_fadvise"):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def verify_archive(path: str | os.PathLike) -> None:
    """Raise :class:`DamagedFile` unless ``path`` is a complete zip archive whose CRCs all match."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise DamagedFile(path, "it is empty: 0 bytes")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if not any(m.filename.endswith("data.pkl") for m in members):
                raise DamagedFile(path, "a zip archive without the data.pkl of a PyTorch file")
            for member in members:
                # No CRC covers these fields; PyTorch's reader hands back no bytes of its own for a
                # member marked as a directory (the DOS attribute bit), or one it cannot decompress.
                if member.external_attr & 0x10 or member.filename.endswith("/"):
                    raise DamagedFile(path, f"member {member.filename} is marked as a directory")
                if member.compress_type != zipfile.ZIP_STORED:
                    raise DamagedFile(path, f"member {member.filename} has compression method {member.compress_type}")
                with archive.open(member) as f:  # raises on a CRC mismatch at the end of the member
                    while f.read(1 << 20):
                        pass
    except DamagedFile:
        raise
    except zipfile.BadZipFile as e:
        text = str(e)
        if "not a zip file" in text:
            text = f"not a complete zip archive ({size} bytes): truncated or overwritten"
        raise DamagedFile(path, text) from None
    except Exception as e:  # EOFError, struct.error, zlib.error, an "encrypted" flag, EIO: unreadable bytes
        raise DamagedFile(path, f"{type(e).__name__}: {e}") from None


def load_verified(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                  from_storage: bool = False) -> Any:
    """Check ``path`` (archive CRCs, then the content digest when it has one) and load it
    without running pickled code; the digest entry is removed from the returned state.

    ``from_storage`` first drops the cached pages of a freshly fsynced file, so that the
    check reads what the storage holds rather than what this process just wrote.
    Raises :class:`DamagedFile` or :class:`UnsafeFile` (both ``ValueError``).
    """
    path = Path(path)
    if from_storage:
        _drop_cached_pages(path)
    legacy = is_legacy_torch_file(path)  # PyTorch's pre-zip format carries no CRCs
    if not legacy:
        verify_archive(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)  # noqa: TID251 -- the reviewed loader
    except pickle.UnpicklingError as e:
        # torch reports every failure of its restricted unpickler as "Weights only load failed";
        # only a refused GLOBAL (a class or function to import and call) means the file needs pickle.
        if "global" in str(e).lower():
            raise UnsafeFile(
                f"refusing to load {path}: it is not a plain tensor file (UnpicklingError). "
                "Files that need unrestricted pickle (e.g. DomainBed's model.pkl) are not loaded, since "
                "unpickling can run arbitrary code; re-save the state dict with torch.save(model.state_dict())."
            ) from None
        detail = str(e).split("WeightsUnpickler error:")[-1].split("Check the documentation")[0].strip()
        raise DamagedFile(path, f"its pickle stream does not decode: {detail[:200]}") from None
    except Exception as e:  # intact per the CRCs, yet unreadable: count it as damaged
        raise DamagedFile(path, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}") from None
    if isinstance(state, dict) and DIGEST_KEY in state:
        expected = state.pop(DIGEST_KEY)
        if content_digest(state) != expected:
            raise DamagedFile(path, "what it loads to does not match the sha256 saved in it")
    return state


# ----------------------------------------------------------------------------- choosing a checkpoint


def quarantine(path: Path) -> Path:
    """Move a damaged file aside as ``NAME.damaged`` (replacing an older one); returns the new path."""
    target = path.with_name(path.name + DAMAGED_SUFFIX)
    os.replace(path, target)
    return target


def load_newest_intact(paths: Sequence[Path], map_location: str | torch.device = "cpu",
                       what: str = "checkpoint") -> tuple[Any, Path | None]:
    """Load the first of ``paths`` (newest first) that exists and is intact.

    Each damaged one is moved aside with :func:`quarantine` and reported on stderr with
    what is used instead. Returns ``(state, path)``, or ``(None, None)`` when none is
    intact. An :class:`UnsafeFile` is not skipped: it is raised.
    """
    damaged: list[str] = []
    for path in paths:
        if not path.exists():
            continue
        try:
            state = load_verified(path, map_location)
        except DamagedFile as e:
            kept = quarantine(path)
            damaged.append(path.name)
            print(f"warning: {path.name} is damaged ({e.reason}); kept as {kept.name} for inspection.",
                  file=sys.stderr)
            continue
        if damaged:
            print(f"warning: using the previous {what}, {path.name}, instead of the damaged "
                  f"{', '.join(damaged)}; the steps after it run again.", file=sys.stderr)
        return state, path
    if damaged:
        print(f"warning: no intact {what} is left ({', '.join(damaged)} damaged); starting again from step 0.",
              file=sys.stderr)
    return None, None
