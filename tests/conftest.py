"""Shared fixtures. Tests run on the CPU, offline, with small thread counts.

Helper modules of the test suite (``fixtures_records``) are reached through fixtures
defined here, not by editing ``sys.path`` in each test file: pytest puts this folder on
the path when it loads this conftest.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

import fixtures_records

os.environ.setdefault("MPLBACKEND", "Agg")
# Two threads on the 2-core CI machine; fewer when OMP_NUM_THREADS asks (the suite run beside
# training jobs: more threads than free cores spin against each other and run several times slower).
_omp = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
torch.set_num_threads(min(2, os.cpu_count() or 1, int(_omp) if _omp.isdigit() and int(_omp) > 0 else 2))


@pytest.fixture
def empty_torch_hub(tmp_path, monkeypatch):
    """A torch hub directory with no cached weights (and no Hugging Face cache)."""
    hub = tmp_path / "hub"
    hub.mkdir()
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield hub
    torch.hub.set_dir(old)


@pytest.fixture(scope="session")
def debug28():
    """DomainBed's Debug28 (three 28-px domains of 32 random images, env 0 held out), built
    once for the session: the algorithm tests read it and never change it."""
    from domainbed.datasets import build_dataset

    return build_dataset("Debug28", None, [0], {})


@pytest.fixture(scope="session")
def records_fixture() -> ModuleType:
    """The synthetic-sweep module (:mod:`fixtures_records`): its layout constants and writers."""
    return fixtures_records


@pytest.fixture
def record_sweep(tmp_path: Path) -> Path:
    """A synthetic sweep folder written by :func:`fixtures_records.write_sweep`."""
    sweep = tmp_path / "sweep"
    fixtures_records.write_sweep(sweep)
    return sweep
