"""Which loader makes a run's training batches: the CPU loaders of
:mod:`domainbed.training.loaders`, or the same batches decoded and augmented on the
training device (:mod:`domainbed.datasets.device_pipeline`), chosen by the hparam
``input_pipeline``."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping

import torch
from torch.utils.data import Dataset

from domainbed.datasets.base import MultipleDomainDataset
from domainbed.datasets.device_pipeline import DeviceBatches, collate_encoded, fetch_encoded, resolve_input_pipeline
from domainbed.training.loaders import train_loader


def device_train_loader(
    dataset: Dataset, batch_size: int, seed: int, start_step: int, num_workers: int, pin_memory: bool,
    class_balanced: bool = False, *, device: torch.device | str, image_size: int,
) -> DeviceBatches:
    """:func:`~domainbed.training.loaders.train_loader`'s batches, decoded and augmented on
    ``device`` (``pin_memory`` is ignored: workers send encoded files)."""
    loader = train_loader(dataset, batch_size, seed, start_step, num_workers, False, class_balanced,
                          fetch=fetch_encoded, collate_fn=collate_encoded)
    return DeviceBatches(loader, device, image_size)


def select_train_loader(hparams: Mapping[str, Any], dataset: MultipleDomainDataset,
                        device: torch.device) -> tuple[str, Callable[..., Any]]:
    """``(pipeline, factory)``: the factory takes :func:`train_loader`'s arguments."""
    pipeline = resolve_input_pipeline(hparams, dataset, device)
    if pipeline == "cpu":
        return pipeline, train_loader
    return pipeline, partial(device_train_loader, device=device, image_size=int(dataset.input_shape[-1]))
