"""DomainBed's ``domainbed.lib.misc``: its public helpers under their names, for users'
scripts and algorithms written against DomainBed (``make_weights_for_balanced_classes``,
``split_dataset``, ``random_pairs_of_minibatches``, ``accuracy``, ``Tee``, ``print_row``,
``seed_hash``, ``ParamDict``, ...).

A face for users, not a base: nothing in the package imports it. Where the package does the
same job the name is re-exported from its home (``seed_hash`` and our other seeding helpers
from :mod:`domainbed.lib.seeding`, ``split_dataset`` from :mod:`domainbed.datasets.splits`,
``Tee`` from :mod:`domainbed.training.tee`, ``print_row`` from
:mod:`domainbed.scripts.collect_results`) or written as a thin layer over it (labels read
as :mod:`domainbed.training.loaders` reads them, accuracy as
:mod:`domainbed.training.evaluation` measures it); the rest is DomainBed's alone and lives here.
"""

from __future__ import annotations

import operator
import sys
from collections import OrderedDict
from numbers import Number
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch.utils.data import Dataset

from domainbed.datasets.splits import SplitDataset as _SplitDataset
from domainbed.datasets.splits import split_dataset
from domainbed.lib.seeding import (
    rng_state,
    sample_generator,
    sample_seed,
    seed_hash,
    set_global_seed,
    set_rng_state,
)
from domainbed.scripts.collect_results import print_row
from domainbed.training.evaluation import InputPolicy, evaluate
from domainbed.training.loaders import dataset_labels
from domainbed.training.tee import Tee

__all__ = [
    "MovingAverage", "ParamDict", "Tee", "_SplitDataset", "accuracy", "l2_between_dicts",
    "make_weights_for_balanced_classes", "pdb", "print_row", "print_separator",
    "random_pairs_of_minibatches", "rng_state", "sample_generator", "sample_seed", "seed_hash",
    "set_global_seed", "set_rng_state", "split_dataset",
]


def make_weights_for_balanced_classes(dataset: Dataset) -> torch.Tensor:
    """Per-sample weights (float32) that make every class present equally likely:
    ``1 / (count of the sample's class × number of classes present)``, so they sum to 1.
    Labels are read without loading the inputs where the dataset allows it."""
    labels = dataset_labels(dataset)
    if labels.numel() == 0:
        return torch.zeros(0)
    counts = torch.bincount(labels)
    n_classes = int((counts > 0).sum())
    return (1.0 / (counts[labels].double() * n_classes)).float()


def random_pairs_of_minibatches(
    minibatches: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> list[tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]:
    """Order the domains by ``torch.randperm`` and pair each with the next one, cyclically;
    both batches of a pair are cut to the shorter one's length."""
    perm = torch.randperm(len(minibatches)).tolist()
    pairs = []
    for k, i in enumerate(perm):
        (xi, yi), (xj, yj) = minibatches[i], minibatches[perm[(k + 1) % len(perm)]]
        n = min(len(xi), len(xj))
        pairs.append(((xi[:n], yi[:n]), (xj[:n], yj[:n])))
    return pairs


def accuracy(network: torch.nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
             weights: torch.Tensor | None, device: torch.device | str) -> float:
    """Accuracy of ``network.predict`` over ``loader``, each sample weighted by ``weights``
    (in loader order; None: all 1). A network with one output is read as a binary
    classifier (``logit > 0``). Leaves the network in training mode, as DomainBed's does.

    Unweighted multi-class accuracy is :func:`domainbed.training.evaluation.evaluate`'s (the
    network's own input path and precision when it is an Algorithm)."""
    if weights is None and isinstance(network, InputPolicy):
        acc, _ = evaluate(network, loader)
        network.train()
        return acc
    correct = total = 0.0
    offset = 0
    network.eval()
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = network.predict(x)
            w = torch.ones(len(x)) if weights is None else weights[offset:offset + len(x)]
            offset += len(x)
            w = w.to(device)
            hits = logits.gt(0).view(-1).eq(y) if logits.size(1) == 1 else logits.argmax(1).eq(y)
            correct += float((hits.float() * w).sum())
            total += float(w.sum())
    network.train()
    return correct / total


def pdb() -> None:
    """Drop into the debugger with the real stdout (not a :class:`Tee`)."""
    import pdb as _pdb

    sys.stdout = sys.__stdout__
    print("Launching PDB, enter 'n' to step to parent function.")
    _pdb.set_trace()


def print_separator() -> None:
    print("=" * 80)


def l2_between_dicts(dict_1: Mapping[str, torch.Tensor], dict_2: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean squared difference of two dicts of tensors with the same keys, flattened in key order."""
    if set(dict_1) != set(dict_2):
        raise ValueError(f"the dicts have different keys: {sorted(set(dict_1) ^ set(dict_2))}")
    keys = sorted(dict_1)
    flat_1 = torch.cat([dict_1[k].reshape(-1) for k in keys])
    flat_2 = torch.cat([dict_2[k].reshape(-1) for k in keys])
    return (flat_1 - flat_2).pow(2).mean()


class MovingAverage:
    """Exponential moving average of dicts of tensors (DomainBed's Fishr keeps one): each :meth:`update` returns
    ``ema · previous + (1 − ema) · data`` per key (``previous`` starts at 0), divided by
    ``1 − ema`` when ``oneminusema_correction``, so the gradient through ``data`` does not
    shrink with ``ema``. Values are flattened to shape ``(1, -1)``."""

    def __init__(self, ema: float, oneminusema_correction: bool = True):
        self.ema = ema
        self.ema_data: dict[str, torch.Tensor] = {}
        self._updates = 0
        self._oneminusema_correction = oneminusema_correction

    def update(self, dict_data: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for name, data in dict_data.items():
            data = data.view(1, -1)
            previous = torch.zeros_like(data) if self._updates == 0 else self.ema_data[name]
            average = self.ema * previous + (1.0 - self.ema) * data
            self.ema_data[name] = average.detach().clone()
            out[name] = average / (1.0 - self.ema) if self._oneminusema_correction else average
        self._updates += 1
        return out


class ParamDict(OrderedDict):
    """A dict of tensors (a model's weights) with arithmetic: ``a + b``, ``a - b``, ``2 * a``,
    ``a / 2``, ``-a``, key by key with another dict or with a number."""

    def _apply(self, other: Any, op: Callable[[Any, Any], Any]) -> "ParamDict":
        if isinstance(other, Number):
            return ParamDict((k, op(v, other)) for k, v in self.items())
        if isinstance(other, Mapping):
            return ParamDict((k, op(v, other[k])) for k, v in self.items())
        return NotImplemented

    def __add__(self, other: Any) -> "ParamDict":
        return self._apply(other, operator.add)

    __radd__ = __add__

    def __sub__(self, other: Any) -> "ParamDict":
        return self._apply(other, operator.sub)

    def __rsub__(self, other: Any) -> "ParamDict":
        return (-self) + other

    def __mul__(self, other: Any) -> "ParamDict":
        return self._apply(other, operator.mul)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> "ParamDict":
        return self._apply(other, operator.truediv)

    def __neg__(self) -> "ParamDict":
        return ParamDict((k, -v) for k, v in self.items())
