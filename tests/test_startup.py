"""Start-up cost: modules import only what their callers use (checked in fresh interpreters).

Every job of a sweep pays the import of the train script, and the reporting tools run on
machines without a GPU stack in mind; what is heavy (torch, torchvision's model zoo and
``torch._dynamo``, which any ``import torchvision`` pulls in) is imported where it is used.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "torch._dynamo", "timm")


def imported_after(statement: str) -> set[str]:
    """Which of HEAVY are in ``sys.modules`` after running ``statement`` in a fresh interpreter."""
    code = f"import json, sys\n{statement}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_launchers_selection_records_and_resources_do_not_import_torch() -> None:
    statement = (
        "import domainbed, domainbed.launchers, domainbed.command_launchers, domainbed.model_selection, "
        "domainbed.results, domainbed.results.selection, domainbed.results.records, domainbed.lib.query, "
        "domainbed.lib.reporting, domainbed.lib.resources"
    )
    assert imported_after(statement) == set()


@pytest.mark.slow
def test_train_script_import_leaves_out_torchvision_and_dynamo() -> None:
    loaded = imported_after("import domainbed.scripts.train")
    assert "torch" in loaded and not loaded & {"torchvision", "torch._dynamo", "timm"}
