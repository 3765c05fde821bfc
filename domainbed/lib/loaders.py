"""Data loaders for training and evaluation.

Training batches are drawn with replacement, and batch ``t`` of domain ``d`` depends only
on ``(seed, d, t)``. A resumed run therefore sees exactly the batches an uninterrupted run
would, with no loader state to save.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from domainbed.lib.misc import seed_hash


class StepBatchSampler(Sampler[list[int]]):
    """Infinite batches of indices; batch ``t`` is a pure function of ``(seed, t)``."""

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int = 0, weights: torch.Tensor | None = None):
        if n == 0:
            raise ValueError("cannot sample batches from an empty domain")
        self.n, self.batch_size, self.seed, self.start_step = n, batch_size, seed, start_step
        self.weights = weights

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            g = torch.Generator().manual_seed(seed_hash(self.seed, step))
            if self.weights is None:
                idx = torch.randint(0, self.n, (self.batch_size,), generator=g)
            else:
                idx = torch.multinomial(self.weights, self.batch_size, replacement=True, generator=g)
            yield idx.tolist()
            step += 1

    def __len__(self) -> int:  # pragma: no cover - infinite by design
        raise TypeError("StepBatchSampler is infinite")


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """Labels of every sample, read from the dataset's label list (``targets`` of an image
    folder, ``y`` of in-memory domains, through ``Subset`` views) without loading inputs."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    for attr in ("targets", "y"):
        if hasattr(dataset, attr):
            return torch.as_tensor(getattr(dataset, attr), dtype=torch.long)
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])


def class_balanced_weights(dataset: Dataset) -> torch.Tensor:
    """Per-sample weights that make every class equally likely."""
    labels = dataset_labels(dataset)
    counts = torch.bincount(labels).float()
    return 1.0 / counts[labels]


def train_loader(
    dataset: Dataset, batch_size: int, seed: int, start_step: int, num_workers: int, pin_memory: bool,
    class_balanced: bool = False,
) -> DataLoader:
    weights = class_balanced_weights(dataset) if class_balanced else None
    sampler = StepBatchSampler(len(dataset), batch_size, seed, start_step, weights)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


def zip_batches(loaders: Sequence[DataLoader]) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """One batch from every loader per step."""
    return (list(batches) for batches in zip(*loaders))
