"""Sweep definitions and notebooks resolve from the checkout and from an installed wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import fixtures_wheel
import pytest

from domainbed.lib import resources

REPO = Path(__file__).resolve().parents[1]


def test_checkout_files_resolve_and_bad_names_say_what_exists() -> None:
    assert resources.path("sweeps/offline_demo.json") == REPO / "sweeps" / "offline_demo.json"
    assert resources.path("notebooks/per_domain_accuracy.ipynb") == REPO / "notebooks" / "per_domain_accuracy.ipynb"
    assert resources.folder("sweeps") == REPO / "sweeps"
    assert "ftlp_paper.json" in resources.names("sweeps")
    with pytest.raises(FileNotFoundError, match=r"available in sweeps/: .*offline_demo\.json"):
        resources.path("sweeps/nope.json")
    for bad in ("../setup.py", "sweeps/../setup.py", "/etc/passwd", "data/x.json", "sweeps"):
        with pytest.raises(ValueError, match="expected '<folder>/<file>'"):
            resources.path(bad)


# Run from an unpacked wheel, away from the checkout: everything printed must lie inside the wheel.
PROBE = """
import json
from domainbed.lib import resources
from domainbed.scripts import run_notebook
print(json.dumps({
    "package": __import__("domainbed").__file__,
    "sweep": str(resources.path("sweeps/offline_demo.json")),
    "sweeps": resources.names("sweeps"),
    "notebook": str(run_notebook.default_notebook()),
}))
"""


@pytest.mark.slow
def test_resources_resolve_from_a_built_wheel(tmp_path: Path) -> None:
    wheel = fixtures_wheel.build_wheel(tmp_path)  # from a copy of the sources: the checkout stays clean
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
        names = zf.namelist()
    assert "domainbed/resources/sweeps/offline_demo.json" in names
    assert "domainbed/resources/notebooks/per_domain_accuracy.ipynb" in names
    assert "domainbed/results/tables/published.json" in names  # the "(reported)" rows' data
    env = {**os.environ, "PYTHONPATH": str(site)}
    reported = subprocess.run(
        [sys.executable, "-c", "from domainbed.results.tables import reference as r; print(r.__file__, len(r.REFERENCE_RESULTS))"],
        check=True, cwd=tmp_path, env=env, capture_output=True, text=True,
    ).stdout.split()
    assert Path(reported[0]).is_relative_to(site) and reported[1] == "5"
    probe = subprocess.run([sys.executable, "-c", PROBE], check=True, cwd=tmp_path, env=env, capture_output=True, text=True)
    found = json.loads(probe.stdout)
    assert Path(found["package"]).is_relative_to(site)  # the wheel's package, not the checkout's
    assert found["sweep"] == str(site / "domainbed" / "resources" / "sweeps" / "offline_demo.json")
    assert found["notebook"] == str(site / "domainbed" / "resources" / "notebooks" / "per_domain_accuracy.ipynb")
    assert sorted(found["sweeps"]) == sorted(p.name for p in (REPO / "sweeps").glob("*.json"))
    # The sweep script's own lookup: --sweep NAME from a folder with no sweeps/ in it.
    resolved = subprocess.run(
        [sys.executable, "-c", "from domainbed.sweep.sweep_file import resolve_sweep_path; print(resolve_sweep_path('offline_demo'))"],
        check=True, cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert resolved.stdout.strip() == found["sweep"]
    status = subprocess.run(
        [sys.executable, "-m", "domainbed.scripts.sweep", "status", "--sweep", "offline_demo", "--data_dir", "data",
         "--output_dir", str(tmp_path / "sweep_out")],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    # offline_demo: ERM and ERM_FTLP x test env 5 x hparams seed 0 x 3 trials, nothing run yet.
    assert "6 jobs: 0 done, 0 incomplete, 6 not launched." in status.stdout
    # columns: done, running, interrupted, failed, not launched
    assert any(line.split() == ["RotatedMNISTSubset", "ERM_FTLP", "0", "0", "0", "0", "3"]
               for line in status.stdout.splitlines())
