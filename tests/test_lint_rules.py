"""The ruff configuration forbids what the package must never do (shells, unsafe loads).

These checks replace hand-written code audits: `make lint` runs ruff over the repository
in CI; here we make sure the configuration in pyproject.toml really reports each case.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ruff")

REPO = Path(__file__).resolve().parents[1]

CASES = {
    "shell_true": ("import subprocess\nsubprocess.run('ls', shell=True)\n", "S602"),
    "os_system": ("import os\nos.system('ls')\n", "S605"),
    "os_popen": ("import os\nos.popen('ls')\n", "TID251"),
    "getoutput": ("import subprocess\nsubprocess.getoutput('ls')\n", "TID251"),
    "pickle_loads": ("import pickle\npickle.loads(b'')\n", "S301"),
    "pickle_import": ("import pickle\n", "TID251"),
    "dill": ("import dill\n", "TID251"),
    "read_pickle": ("import pandas as pd\npd.read_pickle('x')\n", "TID251"),
    "numpy_load": ("import numpy as np\nnp.load('x', allow_pickle=True)\n", "TID251"),
    "torch_load": ("import torch\ntorch.load('x')\n", "TID251"),
    "yaml_load": ("import yaml\nyaml.load('a: 1')\n", "S506"),
}


def lint(source: str, filename: str) -> str:
    """ruff's findings for ``source`` as if it were ``filename`` in this repository."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
         "--config", str(REPO / "pyproject.toml"), "--stdin-filename", filename, "-"],
        input=source, capture_output=True, text=True, cwd=REPO, check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    return result.stdout


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_package_config_reports_it(case: str) -> None:
    source, code = CASES[case]
    assert code in lint(source, "domainbed/lib/example.py")


def test_clean_code_passes_and_reviewed_loads_can_be_marked() -> None:
    clean = (
        "import subprocess\nimport sys\n\nimport torch\n\n"
        "subprocess.run([sys.executable, '-c', 'pass'], check=True)\n"
        "state = torch.load('x', weights_only=True)  # noqa: TID251 - reviewed\n"
    )
    assert lint(clean, "domainbed/lib/example.py").strip() in ("", "All checks passed!")
