"""The per-domain accuracy notebook runs end to end on a synthetic sweep and draws figures."""

from __future__ import annotations

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
