"""Is a saved file intact? Damaged files (storage faults) told apart from unsafe ones (pickle).

Every ``.pt`` file this package writes is PyTorch's zip archive, whose members each carry a
CRC-32 of their bytes. ``torch.load`` does not check them (a flipped byte in a tensor loads
silently), so :func:`verify_archive` reads every member back and checks it: a truncated
copy, a file cut short by a full quota, zeroed blocks or bit rot all fail it. A file that
passes and still needs unrestricted pickle is *unsafe*, not damaged: it was written by
something else and is refused, never run.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any, Sequence

import torch

DAMAGED_SUFFIX = ".damaged"
# PyTorch's pre-1.6 format: a pickle stream that starts with this magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


class DamagedFile(ValueError):
    """The file's bytes are not those that were written (truncated, overwritten, bit rot)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path} is damaged ({reason})")


class UnsafeFile(ValueError):
    """The file is intact but loading it would need unrestricted pickle."""


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


def verify_archive(path: str | os.PathLike, from_storage: bool = False) -> None:
    """Raise :class:`DamagedFile` unless ``path`` is a complete zip archive whose CRCs all match.

    ``from_storage`` first drops the cached pages of a freshly fsynced file, so that the
    check reads what the storage holds rather than what this process just wrote.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise DamagedFile(path, "it is empty: 0 bytes")
    if from_storage:
        _drop_cached_pages(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if not any(m.filename.endswith("data.pkl") for m in members):
                raise DamagedFile(path, "a zip archive without the data.pkl of a PyTorch file")
            for member in members:
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
    except (EOFError, ValueError, struct.error, zlib.error, NotImplementedError, OSError) as e:
        raise DamagedFile(path, f"{type(e).__name__}: {e}") from None


def load_verified(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Verify ``path`` (:func:`verify_archive`), then load it without running pickled code.

    Raises :class:`DamagedFile` or :class:`UnsafeFile` (both ``ValueError``).
    """
    legacy = is_legacy_torch_file(path)  # carries no checksums: loaded as it is
    if not legacy:
        verify_archive(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if legacy or "Weights only load failed" in str(e):
            raise UnsafeFile(
                f"refusing to load {path}: it is not a plain tensor file (UnpicklingError). "
                "Files that need unrestricted pickle (e.g. DomainBed's model.pkl) are not loaded, since "
                "unpickling can run arbitrary code; re-save the state dict with torch.save(model.state_dict())."
            ) from None
        raise DamagedFile(path, f"its pickle stream does not decode: {e}") from None
    except Exception as e:  # intact per the CRCs, yet unreadable: count it as damaged
        raise DamagedFile(path, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


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
