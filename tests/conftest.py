"""Shared fixtures. Tests run on the CPU, offline, with small thread counts."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, os.cpu_count() or 1))


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
