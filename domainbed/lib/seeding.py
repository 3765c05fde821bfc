"""Seeding that follows DomainBed's protocol (docs/design.md §9): ``seed_hash``, per-sample
augmentation seeds, and saving / restoring every RNG a run depends on.

Re-exported by :mod:`domainbed.lib.misc` (DomainBed's import name for ``seed_hash``).
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch


def seed_hash(*args: Any) -> int:
    """Deterministic integer seed from any printable arguments.

    DomainBed's convention: the md5 of ``str(args)`` read as an integer, modulo 2**31.
    Keeping it bit-for-bit lets our splits and hparam draws match DomainBed sweeps.
    """
    digest = hashlib.md5(str(args).encode("utf-8"), usedforsecurity=False).hexdigest()
    return int(digest, 16) % (2**31)


def sample_seed(loader_seed: int, step: int, position: int) -> int:
    """Seed of the augmentation of the training sample at ``position`` in batch ``step``.

    Both input pipelines (CPU loader workers and the device pipeline) seed a sample's
    augmentation draws with it, so they do not depend on the pipeline, the number of
    workers or where a resumed run restarted.
    """
    return seed_hash(loader_seed, step, position)


def sample_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (e.g. a :func:`sample_seed`)."""
    return torch.Generator().manual_seed(seed)


def set_global_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) with one value."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG state a training run depends on, in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "python": list(py_state) + [-1 if py_gauss is None else py_gauss],
        "python_version": py_version,
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    py = list(state["python"])
    gauss = py.pop()
    random.setstate((state["python_version"], tuple(int(v) for v in py), None if gauss == -1 else gauss))
    npst = state["numpy"]
    np.random.set_state(
        ("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
