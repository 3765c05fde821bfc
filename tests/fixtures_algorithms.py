"""Algorithms built on Debug28 for the algorithm tests (the dataset is conftest's ``debug28``)."""

from __future__ import annotations

import torch

from domainbed import hparams_registry
from domainbed.algorithms import get_algorithm_class


def make(name: str, data, seed: int = 0, **overrides):
    """``name`` with its Debug28 defaults, batch size 8 and ``overrides``, set up on the CPU;
    the global seed is set to ``seed`` first, so paired constructions start identically."""
    torch.manual_seed(seed)
    hparams = hparams_registry.default_hparams(name, "Debug28")
    hparams.update({"batch_size": 8, **overrides})
    return get_algorithm_class(name)(data.input_shape, data.num_classes, 2, hparams).setup("cpu")
