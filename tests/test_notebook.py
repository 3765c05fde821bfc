"""The per-domain accuracy notebook runs end to end on a synthetic sweep and draws figures."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from domainbed.lib import resources

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = resources.path("notebooks/per_domain_accuracy.ipynb")


def test_notebook_is_stored_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert 'os.environ.get("DOMAINBED_SWEEP_DIR", "demo_sweep")' in "".join(code[0]["source"])


FIGURES = ["ftlp_bars.png", "paired_gains.png", "curves_task_loss.png", "prior_term.png"]


def test_every_figure_cell_of_the_notebook_names_its_file():
    nb = json.loads(NOTEBOOK.read_text())
    drawing = [c for c in nb["cells"] if c["cell_type"] == "code" and "fig = " in "".join(c["source"])]
    assert [f"{c['metadata'].get('figure')}.png" for c in drawing] == FIGURES


def test_figure_files_are_named_after_the_cell_metadata(tmp_path):
    from domainbed.scripts import run_notebook

    def image(payload: bytes) -> dict:
        return nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(payload).decode()})

    cells = [
        nbformat.v4.new_code_cell("fig = a()", metadata={"figure": "Paired gains"}, outputs=[image(b"a")]),
        nbformat.v4.new_code_cell("fig = b()", outputs=[image(b"b")]),  # unnamed: the cell's place
        nbformat.v4.new_code_cell("c()", metadata={"figure": "curves"}, outputs=[image(b"c1"), image(b"c2")]),
        nbformat.v4.new_code_cell("d()", metadata={"figure": "curves"}, outputs=[image(b"d")]),
    ]
    written = run_notebook.save_figures(nbformat.v4.new_notebook(cells=cells), tmp_path / "figures")
    assert [p.name for p in written] == ["paired_gains.png", "cell01_0.png", "curves.png", "curves_2.png", "curves_cell03.png"]
    assert [p.read_bytes() for p in written] == [b"a", b"b", b"c1", b"c2", b"d"]


@pytest.mark.slow
def test_notebook_executes_on_fixture_sweep(record_sweep, tmp_path, monkeypatch):
    sweep = record_sweep
    # The kernel inherits this environment (conftest sets MPLBACKEND=Agg; the notebook
    # switches to inline itself): point it at the sweep, make the repo
    # importable, and keep matplotlib's cache out of the home directory.
    monkeypatch.setenv("DOMAINBED_SWEEP_DIR", str(sweep))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    # Through the public runner (as `make demo` does): "python3" resolves to the
    # interpreter running the tests (jupyter_client swaps in sys.executable).
    from domainbed.scripts import run_notebook

    executed = tmp_path / "out" / "executed.ipynb"
    figures = run_notebook.execute(NOTEBOOK, sweep, executed, timeout=120)  # raises on a failing cell
    assert len(figures) >= 4 and all(f.read_bytes().startswith(b"\x89PNG") for f in figures)
    assert [f.name for f in figures] == FIGURES  # named after what they show, not cellNN_J.png
    nb = nbformat.read(executed, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # bars, paired gains, curves, prior-term curve
    text = "".join(o.get("text", "") for o in outputs) + "".join(
        o.get("data", {}).get("text/plain", "") for o in outputs
    )
    assert "Skipped 2 incomplete jobs" in text
    assert "SWAD_FTLP" in text and "±" in text
    assert "SWAD_FTLP − SWAD" in text  # the paired-gain table
