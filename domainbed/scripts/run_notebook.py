"""Execute a notebook headless against a sweep, keep the executed copy and its figures.

    python -m domainbed.scripts.run_notebook --sweep_dir demo_sweep

writes ``demo_sweep/per_domain_accuracy.executed.ipynb`` and the figures it drew as
``demo_sweep/figures/<name>.png`` (the name from each cell's ``figure`` metadata, e.g.
``paired_gains.png``), so a sweep can be inspected without a notebook server.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
from pathlib import Path
from typing import Any, Sequence

from domainbed.lib import resources

DEFAULT_NOTEBOOK_NAME = "per_domain_accuracy.ipynb"


def default_notebook() -> Path:
    """The per-domain accuracy notebook shipped with the package (checkout or wheel)."""
    return resources.path(f"notebooks/{DEFAULT_NOTEBOOK_NAME}")


def execute(notebook: Path, sweep_dir: Path, output: Path, timeout: int = 600) -> list[Path]:
    """Run every cell with ``DOMAINBED_SWEEP_DIR=sweep_dir``; returns the PNG files written."""
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError:
        raise SystemExit(
            "error: executing notebooks needs the notebook extra (nbformat, nbclient, ipykernel, notebook): "
            "pip install 'domainbed[notebook]' (in a checkout: pip install -e '.[notebook]')"
        ) from None
    if not sweep_dir.is_dir():
        raise SystemExit(f"error: sweep folder {sweep_dir} does not exist; run a sweep first (e.g. make demo)")
    nb = nbformat.read(str(notebook), as_version=4)
    os.environ["DOMAINBED_SWEEP_DIR"] = str(sweep_dir.resolve())
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(notebook.parent)}}).execute()
    output.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(output))
    return save_figures(nb, output.parent / "figures")


# Cell metadata key naming the figure a cell draws, e.g. {"figure": "paired_gains"}.
FIGURE_KEY = "figure"


def _slug(text: str) -> str:
    """A file-name-safe form of ``text``: lower case letters, digits, ``-`` and ``_``."""
    return re.sub(r"[^a-z0-9_-]+", "_", text.strip().lower()).strip("_")


def save_figures(nb: Any, folder: Path) -> list[Path]:
    """Write every PNG output of the executed notebook ``nb`` to ``folder``; returns the files.

    A file is named after its cell's ``metadata["figure"]`` (``paired_gains.png``; a second
    image of the same cell gets ``_2``), so names say what a figure shows and do not shift
    when cells are added; a cell without that name falls back to ``cellNN_J.png``.
    """
    written: list[Path] = []
    for i, cell in enumerate(nb.cells):
        base = _slug(str(cell.get("metadata", {}).get(FIGURE_KEY, "")))
        images = [out["data"]["image/png"] for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
        for j, png in enumerate(images):
            if base:
                stem = base if j == 0 else f"{base}_{j + 1}"
            else:
                stem = f"cell{i:02d}_{j}"
            path = folder / f"{stem}.png"
            if path in written:  # two cells with one name: keep both
                path = folder / f"{stem}_cell{i:02d}.png"
            folder.mkdir(parents=True, exist_ok=True)
            path.write_bytes(base64.b64decode(png))
            written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m domainbed.scripts.run_notebook", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep_dir", type=Path, default=Path("demo_sweep"))
    p.add_argument("--notebook", type=Path, default=None, help=f"default: the packaged notebooks/{DEFAULT_NOTEBOOK_NAME}")
    p.add_argument("--output", type=Path, default=None, help="default: SWEEP_DIR/<name>.executed.ipynb")
    args = p.parse_args(argv)
    notebook = args.notebook or default_notebook()
    output = args.output or args.sweep_dir / f"{notebook.stem}.executed.ipynb"
    figures = execute(notebook, args.sweep_dir, output)
    print(f"Executed notebook: {output}")
    print(f"Figures: {', '.join(str(f) for f in figures) or 'none'}")


if __name__ == "__main__":
    main()
