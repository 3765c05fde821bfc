"""Data loaders for training and evaluation.

Training batches are drawn with replacement, and batch ``t`` of domain ``d`` depends only
on ``(seed, d, t)``: its indices, and the augmentation of each of its samples, whose
random parameters come from a generator seeded with ``(seed, t, position in the batch)``
(not from the worker's global generator). A resumed run therefore sees exactly the
batches an uninterrupted run would, with no loader state to save, whatever the number of
workers and whichever input pipeline (CPU or device) runs.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from domainbed.lib.seeding import sample_seed, seed_hash

# fetch(root dataset, index in it, sample seed) -> sample; see SeededSamples.
Fetch = Callable[[Dataset, int, int], Any]


class StepBatchSampler(Sampler[list[Any]]):
    """Infinite batches of indices; batch ``t`` is a pure function of ``(seed, t)``.

    With ``sample_seeds``, each item is ``(index, augmentation seed)`` instead of an index.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int = 0, weights: torch.Tensor | None = None,
                 sample_seeds: bool = False):
        if n == 0:
            raise ValueError("cannot sample batches from an empty domain")
        self.n, self.batch_size, self.seed, self.start_step = n, batch_size, seed, start_step
        self.weights = weights
        self.sample_seeds = sample_seeds

    def __iter__(self) -> Iterator[list[Any]]:
        step = self.start_step
        while True:
            g = torch.Generator().manual_seed(seed_hash(self.seed, step))
            if self.weights is None:
                idx = torch.randint(0, self.n, (self.batch_size,), generator=g)
            else:
                idx = torch.multinomial(self.weights, self.batch_size, replacement=True, generator=g)
            if self.sample_seeds:
                yield [(i, sample_seed(self.seed, step, k)) for k, i in enumerate(idx.tolist())]
            else:
                yield idx.tolist()
            step += 1

    def __len__(self) -> int:  # pragma: no cover - infinite by design
        raise TypeError("StepBatchSampler is infinite")


def resolve_subset(dataset: Dataset, index: int) -> tuple[Dataset, int]:
    """The dataset under any ``Subset`` views, and the index ``index`` maps to in it."""
    while isinstance(dataset, Subset):
        dataset, index = dataset.dataset, int(dataset.indices[index])
    return dataset, index


def fetch_seeded(root: Dataset, index: int, seed: int) -> Any:
    """A training sample: datasets with a random augmentation (``get_seeded``) draw it from
    ``seed``; the others (in-memory tensors, fixed transforms) ignore it."""
    get = getattr(root, "get_seeded", None)
    return get(index, seed) if get is not None else root[index]


class SeededSamples(Dataset):
    """A dataset indexed by ``(index, augmentation seed)``, as :class:`StepBatchSampler`
    yields them with ``sample_seeds``; ``fetch`` reads the sample from the dataset under
    the ``Subset`` views (the device pipeline passes one that returns encoded files)."""

    def __init__(self, dataset: Dataset, fetch: Fetch = fetch_seeded):
        self.dataset, self.fetch = dataset, fetch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        root, root_index = resolve_subset(self.dataset, index)
        return self.fetch(root, root_index, seed)


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


_INTERRUPTS = {signal.SIGTERM, signal.SIGINT}
_exit_hook_registered = False


def ignore_interrupts(worker_id: int) -> None:
    """``worker_init_fn`` of every loader: a worker ignores SIGTERM and SIGINT.

    Schedulers (Slurm, ``kill -- -PGID``) and Ctrl-C signal every process of a job. A
    worker that died of it would make the main process raise "DataLoader worker ... is
    killed by signal" instead of saving its checkpoint; ignoring them lets the main process
    finish its step, save, and shut the workers down itself (they also leave on their own
    when the main process is gone). The worker starts with both signals blocked
    (:class:`Loader`), so one sent while it starts waits, and is dropped once ignored.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _INTERRUPTS)


def _end_leftover_workers() -> None:
    """At exit, end the loader workers still alive with SIGKILL.

    Python's multiprocessing ends daemonic children at exit with SIGTERM and then waits for
    them; workers ignore SIGTERM (:func:`ignore_interrupts`), so a worker whose loader was
    not shut down before the interpreter exits would make that wait last forever. This
    hook is registered after multiprocessing's, so it runs first.
    """
    # torch's SIGCHLD handler raises when a worker dies of a signal: not news at exit.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    leftover = [child for child in multiprocessing.active_children() if child.daemon]
    for child in leftover:
        child.kill()
    for child in leftover:
        child.join(timeout=5)


class Loader(DataLoader):
    """A ``DataLoader`` whose workers start with SIGTERM and SIGINT blocked until
    :func:`ignore_interrupts` ignores them: no moment of a worker's start-up is open to a
    signal meant for the main process. The main process blocks them only while it forks."""

    def _get_iterator(self) -> Any:
        if self.num_workers == 0:
            return super()._get_iterator()
        global _exit_hook_registered
        if not _exit_hook_registered:
            atexit.register(_end_leftover_workers)
            _exit_hook_registered = True
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _INTERRUPTS)
        try:
            return super()._get_iterator()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a signal that came meanwhile is delivered now


def own_generator(seed: int) -> torch.Generator:
    """The generator a loader draws its workers' base seed from each time it is iterated. Its
    own, not the global one: building or iterating loaders must not move the global stream
    that algorithms draw from (Mixup, URM's noise), or a resumed run, which builds its
    loaders after restoring that stream, would draw other numbers than an uninterrupted one."""
    return torch.Generator().manual_seed(int(seed))


def default_workers(dataset_workers: int) -> int:
    """A dataset's worker count, capped by the cores this process may use (no
    oversubscription warning from the loader, no more processes than cores)."""
    return max(0, min(dataset_workers, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1))


def train_loader(
    dataset: Dataset, batch_size: int, seed: int, start_step: int, num_workers: int, pin_memory: bool,
    class_balanced: bool = False, fetch: Fetch = fetch_seeded, collate_fn: Callable | None = None,
) -> DataLoader:
    """Infinite training batches of ``dataset`` from ``start_step`` on, each sample's
    augmentation seeded by ``(seed, step, position)``; ``fetch`` and ``collate_fn`` let the
    device pipeline load encoded files instead of augmented tensors."""
    weights = class_balanced_weights(dataset) if class_balanced else None
    sampler = StepBatchSampler(len(dataset), batch_size, seed, start_step, weights, sample_seeds=True)
    return Loader(
        SeededSamples(dataset, fetch),
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        collate_fn=collate_fn,
        worker_init_fn=ignore_interrupts,
        generator=own_generator(seed),
    )


class SeededEvalSamples(Dataset):
    """An evaluation view of a dataset with a random augmentation: sample ``i`` draws it from
    a generator seeded with ``(seed, i)``.

    DomainBed evaluates the training domains' splits with their training augmentation.
    Drawn from the global generator, as DomainBed does, those accuracies would depend on the
    number of loader workers (each has a generator of its own) and change when a run
    resumes with new workers; seeded per sample they are the same in every case, and every
    evaluation sees the same augmented images.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        root, root_index = resolve_subset(self.dataset, index)
        return fetch_seeded(root, root_index, sample_seed(self.seed, 0, index))


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int, pin_memory: bool, seed: int = 0) -> DataLoader:
    """Batches of ``dataset`` in order; a randomly augmented dataset is seeded per sample
    (:class:`SeededEvalSamples`), the others are read as they are."""
    root, _ = resolve_subset(dataset, 0) if len(dataset) else (dataset, 0)  # type: ignore[arg-type]
    if hasattr(root, "get_seeded"):
        dataset = SeededEvalSamples(dataset, seed)
    return Loader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory,
        persistent_workers=num_workers > 0, worker_init_fn=ignore_interrupts, generator=own_generator(seed),
    )


def zip_batches(loaders: Sequence[DataLoader]) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """One batch from every loader per step."""
    return (list(batches) for batches in zip(*loaders))
