"""Benchmark 4, the input pipelines: real JPEG files through the package's dataset and
training loaders, for each pipeline side by side.

- ``cpu``: ``train_loader`` (workers decode with PIL and augment each image), batches
  pinned and copied to the device by the step, as ``train`` runs it on the CPU path.
- ``device``: ``device_train_loader`` (workers read the files; one ``decode_jpeg`` call per
  domain batch and the batched augmentation run on the training device).

For each: ``loader_images_per_s``, the batches it makes ready on the device per second,
measured alone, and ``step_images_per_s``, our ERM (configuration b) trained from those
batches end to end (loader, copy or decode + augmentation, step). The CPU path is also
measured with a decoded cache (``CachedDomain``): decoding once, augmenting each time.
"""

from __future__ import annotations

import gc
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from bench_common import Config, Setting, build, synchronize
from PIL import Image

from domainbed.datasets.transforms import TrainAugment
from domainbed.lib.seeding import sample_generator

PIPELINES = ("cpu", "device")


def write_jpeg_folder(root: Path, domains: int, classes: int, per_class: int, side: int = 256, seed: int = 0) -> int:
    """``root/<domain>/<class>/<i>.jpg``: smooth random colour fields plus a little noise
    (about the entropy of a photo, unlike white noise), saved with PIL at quality 90."""
    rng = np.random.RandomState(seed)
    count = 0
    for d in range(domains):
        for c in range(classes):
            folder = root / f"domain{d}" / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                coarse = Image.fromarray(rng.randint(0, 256, (8, 8, 3), dtype=np.uint8))
                img = np.asarray(coarse.resize((side, side), Image.BICUBIC), dtype=np.float32)
                img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.jpg", quality=90)
                count += 1
    return count



class CachedDomain(torch.utils.data.Dataset):
    """A domain decoded once and resized (shorter side ``cache_side``) into uint8 arrays;
    each sample then only runs the package's training augmentation on the cached pixels.

    ``cache_side`` is a little above the training resolution (256 for 224, as the usual
    resize-then-crop recipes do), so RandomResizedCrop still crops from real pixels. The cost
    is memory: about 3·side² bytes per image (200 KB at 256 px; PACS ~2 GB).
    """

    def __init__(self, domain: Any, cache_side: int, transform: TrainAugment):
        from domainbed.datasets.bad_images import load_rgb

        self.transform = transform
        self.images: list[np.ndarray] = []
        self.labels: list[int] = []
        for path, label in domain.samples:
            img = load_rgb(path)
            short = min(img.size)
            if short > cache_side:
                scale = cache_side / short
                img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
            self.images.append(np.asarray(img, dtype=np.uint8).copy())
            self.labels.append(label)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.get_seeded(index, None)

    def get_seeded(self, index: int, seed: int | None) -> tuple[torch.Tensor, int]:
        """As ``ImageDomain.get_seeded``: the augmentation drawn from ``seed``."""
        generator = None if seed is None else sample_generator(seed)
        return self.transform(Image.fromarray(self.images[index]), generator), self.labels[index]



def make_loaders(pipeline: str, datasets: Sequence[Any], s: Setting, workers: int) -> list[Any]:
    """One training loader per domain, as ``train`` builds them for ``pipeline``."""
    from domainbed.training.input_pipeline import device_train_loader
    from domainbed.training.loaders import train_loader

    pin = s.device.type == "cuda"
    if pipeline == "cpu":
        return [train_loader(d, s.batch, seed, 0, workers, pin) for seed, d in enumerate(datasets)]
    return [device_train_loader(d, s.batch, seed, 0, workers, pin, device=s.device, image_size=s.image_size)
            for seed, d in enumerate(datasets)]


def _warm_batches(workers: int) -> int:
    """Batches to drain before timing: the ones prefetched while workers started
    (prefetch_factor 4 x workers), then two."""
    return 4 * workers + 2 if workers > 0 else 2


def loader_images_per_s(loaders: Sequence[Any], s: Setting, workers: int, batches: int) -> float:
    """Images/s the loaders make ready on the training device (the CPU path's batches are
    copied there, as ``Algorithm.update`` does), with no training step in between."""
    from domainbed.training.loaders import zip_batches

    it = zip_batches(loaders)
    for _ in range(_warm_batches(workers)):
        next(it)
    synchronize(s.device)
    t0 = time.perf_counter()
    for _ in range(batches):
        for x, _ in next(it):
            x.to(s.device, non_blocking=True)
    synchronize(s.device)
    rate = batches * s.images_per_step / (time.perf_counter() - t0)
    del it
    return rate


def step_images_per_s(loaders: Sequence[Any], s: Setting, workers: int, steps: int) -> float:
    """Images/s of our ERM (configuration b) trained from the loaders' batches, end to end."""
    from domainbed.training.loaders import zip_batches

    alg = build(Config("fed_erm", "ERM"), s)
    it = zip_batches(loaders)
    for _ in range(_warm_batches(workers)):
        alg.update(next(it))
    synchronize(s.device)
    t0 = time.perf_counter()
    sums: dict[str, torch.Tensor] = {}
    for _ in range(steps):
        for k, v in alg.update(next(it)).items():
            sums[k] = sums[k] + v if k in sums else v.clone()
    for v in sums.values():
        v.item()
    synchronize(s.device)
    rate = steps * s.images_per_step / (time.perf_counter() - t0)
    del it, alg
    return rate


def measure_pipeline(pipeline: str, datasets: Sequence[Any], s: Setting, workers: int, batches: int) -> dict[str, Any]:
    loaders = make_loaders(pipeline, datasets, s, workers)
    out = {
        "runs_on": str(s.device),
        "loader_images_per_s": loader_images_per_s(loaders, s, workers, batches),
        "step_images_per_s": step_images_per_s(loaders, s, workers, batches),
    }
    del loaders  # shuts the persistent workers down
    gc.collect()
    return out


def measure_data(s: Setting, pipelines: Sequence[str], workers: int, per_class: int, batches: int) -> dict[str, Any]:
    """Every requested pipeline on the same JPEG files; the CPU one also from a decoded cache."""
    from domainbed.datasets.images import ImageFolderDomains

    with tempfile.TemporaryDirectory(prefix="domainbed_bench_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        n_files = write_jpeg_folder(root, s.domains, 4, per_class)
        write_s = time.perf_counter() - t0
        ds = ImageFolderDomains(str(root), test_envs=[], hparams={"image_size": s.image_size, "data_augmentation": True})
        results: dict[str, Any] = {}
        for pipeline in pipelines:
            results[pipeline] = measure_pipeline(pipeline, ds.datasets, s, workers, batches)
        if "cpu" in results:
            cache_side = max(s.image_size, math.ceil(s.image_size * 256 / 224))
            t0 = time.perf_counter()
            cached_sets = [CachedDomain(d, cache_side, TrainAugment(s.image_size)) for d in ds.datasets]
            cache_build_s = time.perf_counter() - t0
            loaders = make_loaders("cpu", cached_sets, s, workers)
            cached = loader_images_per_s(loaders, s, workers, batches)
            del loaders
            gc.collect()
            results["cpu"].update({
                "cached_loader_images_per_s": cached,
                "cache_side_px": cache_side,
                "cache_build_images_per_s": n_files / cache_build_s,
                "cache_gain": cached / results["cpu"]["loader_images_per_s"],
            })
    return {
        "files": n_files,
        "file_side_px": 256,
        "jpeg_quality": 90,
        "write_s": write_s,
        "workers_per_domain": workers,
        "worker_processes": workers * s.domains,
        "pin_memory": s.device.type == "cuda",
        "timed_batches": batches,
        "pipelines": results,
    }
