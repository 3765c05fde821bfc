"""Copy stdout/stderr into files of the output directory while still printing them."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import IO, Iterator


class _Tee:
    def __init__(self, stream: IO[str], path: Path | str, mode: str = "a"):
        self.stream = stream
        self.file = open(path, mode, encoding="utf-8", buffering=1)

    def write(self, data: str) -> int:
        self.stream.write(data)
        self.file.write(data)
        return len(data)

    def flush(self) -> None:
        self.stream.flush()
        self.file.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


class Tee(_Tee):
    """DomainBed's ``misc.Tee``: writes go to the current ``sys.stdout`` and to ``fname``
    (opened with ``mode``), e.g. ``sys.stdout = Tee(path, "w")``."""

    def __init__(self, fname: Path | str, mode: str = "a"):
        super().__init__(sys.stdout, fname, mode)


@contextlib.contextmanager
def tee_output(out_path: Path, err_path: Path) -> Iterator[None]:
    """Within the block, stdout also goes to ``out_path`` and stderr to ``err_path``."""
    out, err = _Tee(sys.stdout, out_path), _Tee(sys.stderr, err_path)
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = old
        out.file.close()
        err.file.close()
