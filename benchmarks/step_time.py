#!/usr/bin/env python
"""Step time, throughput and peak memory of ERM, FT-LP and MIRO, side by side (issue 5).

One process, one run, the same backbone / resolution / per-domain batch / number of source
domains for every configuration, on synthetic data (random tensors already on the device):

    a_domainbed_erm  ERM as DomainBed-style code trains it: fp32, NCHW, plain Adam, and a
                     host sync every step (``.item()`` on the loss, as DomainBed's loop does)
    b_erm            our ERM with the package defaults (CUDA: bf16 autocast, channels_last,
                     fused Adam; CPU: fp32, channels_last), logs kept on the device, read once
    c_erm_ftlp       our ERM_FTLP, default FT-LP hparams
    d_miro           MIRO through our code (FT-LP's prior module on stem + stage features)
    e_naive_ftlp     FT-LP written the usual way (defined below): an fp32 prior with autocast
                     off, under ``no_grad`` instead of ``inference_mode``, and ``.item()`` on
                     every loss term every step

Ratios are taken against (b): ``ftlp_over_erm = t(c)/t(b)``, ``miro_over_erm = t(d)/t(b)``,
``domainbed_over_ours = t(a)/t(b)`` and ``naive_over_ftlp = t(e)/t(c)``, with t the median
over repeats of the mean step time (warm-up steps excluded; on CUDA the device is
synchronised before each clock read). The configurations are built first and their timed
repeats interleaved, so a slow spell of a shared machine hits all of them alike. Peak
memory is what each configuration adds (see :class:`MemoryMeter`). ``--ablations`` switches
each optimisation alone (with (b) and (c) rebuilt as references), adds two candidate prior
optimisations that are not in the package (BN folded into the prior; with ``--compile``, a
compiled prior) and compares the two ways of evaluating; the data-pipeline measurement
decodes and augments real JPEG files made on the fly, with and without a decoded cache.

The last line of stdout is one JSON object with every number (also written by ``--json``).
Weights are random (hparam ``pretrained`` false): step time does not depend on their values.

    python benchmarks/step_time.py --quick                       # CPU, < 1 minute
    python benchmarks/step_time.py --device cuda --ablations --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import datetime
import gc
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # runs from a checkout without installing the package

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from domainbed import hparams_registry  # noqa: E402
from domainbed.algorithms import Algorithm, get_algorithm_class  # noqa: E402
from domainbed.algorithms.ftlp import ERM_FTLP  # noqa: E402
from domainbed.lib.evaluation import evaluate  # noqa: E402
from domainbed.networks import Features  # noqa: E402

# Hparams come from the image-dataset family (lr 5e-5, batch 32, ...); the benchmark then
# overrides backbone, resolution and batch. Debug224 is a registered image-family dataset
# that needs no files.
HPARAM_DATASET = "Debug224"

# --quick: one intra-op thread, because on a shared 2-core machine two OpenMP threads keep
# waiting for whichever one was descheduled (measured here: 3x slower steps under load).
QUICK = {"backbone": "resnet18", "image_size": 64, "batch": 8, "steps": 4, "warmup": 2, "repeats": 3, "threads": 1}
FULL = {"backbone": "resnet50", "image_size": 224, "batch": 32, "steps": 30, "warmup": 10, "repeats": 3}


# ---------------------------------------------------------------------------------------
# The straightforward FT-LP (configuration e) and a candidate optimisation of the prior
# ---------------------------------------------------------------------------------------
class NaiveFTLP(ERM_FTLP):
    """FT-LP as it is usually written: the prior is an fp32 copy of the network, run with
    autocast switched off, under ``torch.no_grad`` (not ``inference_mode``). The loss is the
    package's, so (c) and (e) differ only in how the prior is run (and, in the loop, in the
    per-term host syncs). Deliberately not registered: it is a baseline, not a method."""

    def setup(self, device: torch.device | str | None = None) -> "NaiveFTLP":
        super().setup(device)
        self.prior_network.float()  # undo the package's cast to the autocast dtype
        return self

    def prior_features(self, x: torch.Tensor) -> Features:
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            return self.prior_network.forward_features(x.float(), intermediates=self.ftlp_cfg.uses_stages)


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d`` (in the order
    children are registered, which is the forward order in timm's ResNets) into that conv.
    Only valid for a frozen network in eval mode, which the prior is. Returns the count."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for parent in list(module.modules()):
        names = list(parent._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = parent._modules[first], parent._modules[second]
            # type() is exact on purpose: timm's BatchNormAct2d subclasses BatchNorm2d but
            # also applies an activation, which cannot be folded into the conv.
            if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                parent._modules[first] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                parent._modules[second] = nn.Identity()
                folded += 1
    return folded


class FoldedPriorFTLP(ERM_FTLP):
    """ERM_FTLP whose frozen prior has BatchNorm folded into its convolutions (a candidate
    optimisation, not in the package): fewer memory-bound kernels in the prior forward. The
    fold is checked numerically at construction and undone if it changes the features."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        prior = self.prior_network
        original = copy.deepcopy(prior)
        probe = torch.randn(2, *self.input_shape, generator=torch.Generator().manual_seed(0))
        self.folded_bn = fold_batchnorm(prior)
        with torch.no_grad():
            ok = torch.allclose(original(probe), prior(probe), rtol=1e-3, atol=1e-4)
        if not ok:  # pattern not as expected for this backbone: keep the exact prior
            object.__setattr__(self, "_prior_net", original)
            self.folded_bn = 0


# ---------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------
@dataclass
class Config:
    """One measured configuration: an algorithm, hparam overrides and the loop's habits."""

    name: str
    algorithm: str  # a registry name, or a class defined in this file
    overrides: dict[str, Any] = field(default_factory=dict)
    sync_every_step: bool = False  # .item() on every returned value at every step
    label: str = ""
    reference: str = "b_erm"  # the configuration an ablation is compared with


LOCAL_CLASSES: dict[str, type[Algorithm]] = {
    "NaiveFTLP": NaiveFTLP, "FoldedPriorFTLP": FoldedPriorFTLP,
}
DOMAINBED_STYLE = {"precision": "fp32", "channels_last": False, "fused_optimizer": False}


def main_configs() -> list[Config]:
    return [
        Config("a_domainbed_erm", "ERM", dict(DOMAINBED_STYLE), True, "ERM, DomainBed-style: fp32, NCHW, Adam, .item() per step"),
        Config("b_erm", "ERM", {}, False, "our ERM (package defaults, no per-step sync)"),
        Config("c_erm_ftlp", "ERM_FTLP", {}, False, "our ERM_FTLP (default FT-LP hparams)"),
        Config("d_miro", "MIRO", {}, False, "MIRO through our code"),
        Config("e_naive_ftlp", "NaiveFTLP", {}, True, "naive FT-LP: fp32 prior, no_grad, .item() per term"),
    ]


def ablation_configs(erm: dict[str, Any], compile_: bool) -> list[Config]:
    """Each optimisation switched alone to the opposite of what (b) used (``erm``: its
    measured settings, so the ablation follows the package defaults on either device),
    plus the references (b) and (c) rebuilt in the same group."""
    bf16 = erm["precision"] != "fp32"
    cl, fused = erm["channels_last"], erm["fused_optimizer"]
    onoff = lambda flag: "off" if flag else "on"  # noqa: E731
    out = [
        Config("b_erm", "ERM", {}, False, "reference: our ERM"),
        Config("c_erm_ftlp", "ERM_FTLP", {}, False, "reference: our ERM_FTLP", "c_erm_ftlp"),
        Config(f"erm_bf16_{onoff(bf16)}", "ERM", {"precision": "fp32" if bf16 else "bf16"}, False,
               f"(b) with bf16 autocast {onoff(bf16)}"),
        Config(f"erm_channels_last_{onoff(cl)}", "ERM", {"channels_last": not cl}, False,
               f"(b) with channels_last {onoff(cl)}"),
        Config(f"erm_fused_adam_{onoff(fused)}", "ERM", {"fused_optimizer": not fused}, False,
               f"(b) with fused Adam {onoff(fused)}"),
        Config("erm_sync_every_step", "ERM", {}, True, "(b) with .item() on the logs every step"),
        Config("ftlp_prior_fp32_no_grad", "NaiveFTLP", {}, False,
               "(c) with the naive prior (fp32, no_grad) but no per-step sync", "c_erm_ftlp"),
        Config("ftlp_prior_bn_folded", "FoldedPriorFTLP", {}, False,
               "(c) with BN folded into the prior's convs (candidate, not in the package)", "c_erm_ftlp"),
    ]
    if compile_:
        out += [
            Config("erm_compile", "ERM", {"compile": True}, False, "(b) with torch.compile on the featurizer"),
            Config("ftlp_compile", "ERM_FTLP", {"compile": True}, False,
                   "(c) with torch.compile (the hparam compiles the featurizer and the prior)", "c_erm_ftlp"),
        ]
    return out


# ---------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------
def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class MemoryMeter:
    """Peak memory of one configuration.

    Both devices report what the configuration *adds* from the moment it is built: weights,
    gradients, optimizer state, the prior and peak activations; not the synthetic batch nor
    the other configurations alive at the time. CUDA: ``torch.cuda.max_memory_allocated``
    (after ``reset_peak_memory_stats``) minus what was allocated before the build. CPU: the
    peak resident set size minus the RSS before the build. RSS peak is process-wide and
    monotone, so first freed memory is handed back to the OS (``malloc_trim``) and the
    kernel's high-water mark is reset to the current RSS (``/proc/self/clear_refs``, Linux
    >= 4.0). Where that reset is refused the fallback is the growth of ``ru_maxrss``, a lower
    bound, and ``method`` says so.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.method = "cuda_max_memory_allocated_delta" if device.type == "cuda" else "rss_hwm_delta"
        self._base_kib = 0
        self._base_bytes = 0
        self._libc = None
        if device.type != "cuda":
            with contextlib.suppress(OSError):
                self._libc = ctypes.CDLL("libc.so.6")

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base_bytes = torch.cuda.memory_allocated(self.device)
            return
        if self._libc is not None:
            self._libc.malloc_trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self._base_kib = _proc_status_kib("VmRSS") or 0
        except OSError:
            self.method = "ru_maxrss_delta (monotone: a lower bound)"
            self._base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return (torch.cuda.max_memory_allocated(self.device) - self._base_bytes) / 2**20
        if self.method == "rss_hwm_delta":
            peak = _proc_status_kib("VmHWM") or 0
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return max(peak - self._base_kib, 0) / 1024


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------
@dataclass
class Setting:
    """What every configuration shares."""

    device: torch.device
    backbone: str
    image_size: int
    batch: int
    domains: int
    classes: int
    steps: int
    warmup: int
    repeats: int
    precision: str = "auto"  # of our configurations (b)-(e); (a) is always fp32

    @property
    def images_per_step(self) -> int:
        return self.batch * self.domains


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batches(s: Setting, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One (x, y) per source domain, random, already on the device (a data loader's NCHW)."""
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(s.batch, 3, s.image_size, s.image_size, generator=g).to(s.device),
            torch.randint(0, s.classes, (s.batch,), generator=g).to(s.device),
        )
        for _ in range(s.domains)
    ]


def build(config: Config, s: Setting) -> Algorithm:
    name = "ERM_FTLP" if config.algorithm in LOCAL_CLASSES else config.algorithm
    hp = hparams_registry.default_hparams(name, HPARAM_DATASET)
    hp.update({"backbone": s.backbone, "pretrained": False, "image_size": s.image_size, "batch_size": s.batch,
               "precision": s.precision})
    hp.update(config.overrides)
    cls = LOCAL_CLASSES.get(config.algorithm) or get_algorithm_class(config.algorithm)
    torch.manual_seed(0)
    return cls((3, s.image_size, s.image_size), s.classes, s.domains, hp).setup(s.device)


def run_steps(alg: Algorithm, data: list, n: int, sync_every_step: bool) -> None:
    """``n`` optimizer steps as a training loop runs them (the loop's sync habit included)."""
    sums: dict[str, torch.Tensor] = {}
    for _ in range(n):
        logs = alg.update(data)
        if sync_every_step:
            for v in logs.values():  # each term read on its own, as naive loops print them
                v.item()
        else:
            for k, v in logs.items():
                sums[k] = sums[k] + v if k in sums else v.clone()
    for v in sums.values():  # the one host read a checkpoint does
        v.item()


def time_prior_forward(alg: Algorithm, data: list, s: Setting) -> float:
    """Seconds per call of the prior forward alone, as FT-LP runs it inside a step."""
    x = alg.prepare_input(torch.cat([x for x, _ in data]))
    prior = alg.prior_network  # type: ignore[attr-defined]
    stages = alg.ftlp_cfg.uses_stages  # type: ignore[attr-defined]

    def once() -> None:
        with alg.autocast(), torch.inference_mode():
            prior.forward_features(x, intermediates=stages)

    for _ in range(2):
        once()
    times = []
    for _ in range(s.repeats):
        synchronize(s.device)
        t0 = time.perf_counter()
        for _ in range(s.steps):
            once()
        synchronize(s.device)
        times.append((time.perf_counter() - t0) / s.steps)
    return statistics.median(times)


def prepare(config: Config, s: Setting, data: list, meter: MemoryMeter) -> tuple[Algorithm, dict[str, Any]]:
    """Build ``config`` and run its warm-up steps; the peak memory it adds is read here
    (build + at least two steps: from the second on, Adam's state and the activations
    coexist, which is the steady-state peak)."""
    meter.reset()
    t0 = time.perf_counter()
    alg = build(config, s)
    run_steps(alg, data, max(2, s.warmup), config.sync_every_step)
    synchronize(s.device)
    info: dict[str, Any] = {
        "label": config.label,
        "algorithm": config.algorithm,
        "precision": "fp32" if alg._amp_dtype is None else str(alg._amp_dtype).replace("torch.", ""),
        "channels_last": alg._channels_last,
        "fused_optimizer": bool(alg.optimizer.defaults.get("fused")),
        "compile": bool(alg.hparams.get("compile", False)),
        "sync_every_step": config.sync_every_step,
        "peak_mem_mb": meter.peak_mb(),
        "build_and_warmup_s": time.perf_counter() - t0,
    }
    if isinstance(alg, FoldedPriorFTLP):
        info["folded_bn"] = alg.folded_bn
    return alg, info


def measure_group(configs: Sequence[Config], s: Setting, data: list, meter: MemoryMeter,
                  prior_forward: Sequence[str] = (), tolerate_errors: bool = False) -> dict[str, dict[str, Any]]:
    """Time ``configs`` side by side. Every configuration is built and warmed up first, then
    the timed repeats are interleaved (round r runs ``steps`` steps of each configuration, in
    an order rotated every round), so a slow spell of a shared machine hits all of them
    alike instead of one. Reported: the median over rounds of the mean step time."""
    # A throwaway primer first: one-time allocations (cuBLAS/cuDNN workspaces, oneDNN caches,
    # thread pools) would otherwise be charged to the first configuration's memory.
    primer = build(Config("primer", "ERM"), s)
    run_steps(primer, data, 2, False)
    del primer
    built: dict[str, tuple[Config, Algorithm]] = {}
    results: dict[str, dict[str, Any]] = {}
    for config in configs:
        try:
            alg, results[config.name] = prepare(config, s, data, meter)
            built[config.name] = (config, alg)
        except Exception as e:  # an unsupported switch (e.g. compile without a compiler) is a result
            if not tolerate_errors:
                raise
            results[config.name] = {"label": config.label, "error": f"{type(e).__name__}: {e}"[:300]}
            print(f"  {config.name}: failed ({results[config.name]['error'][:120]})", flush=True)
    times: dict[str, list[float]] = {name: [] for name in built}
    order = list(built)
    for r in range(s.repeats):
        for name in order[r % len(order):] + order[:r % len(order)]:
            config, alg = built[name]
            synchronize(s.device)
            t0 = time.perf_counter()
            run_steps(alg, data, s.steps, config.sync_every_step)
            synchronize(s.device)
            times[name].append((time.perf_counter() - t0) / s.steps)
    for name, (config, alg) in built.items():
        step = statistics.median(times[name])
        results[name].update({
            "step_time_s": step,
            "step_times_s": times[name],
            "steps_per_s": 1.0 / step,
            "images_per_s": s.images_per_step / step,
        })
        if name in prior_forward:
            results[name]["prior_forward_s"] = time_prior_forward(alg, data, s)
        print(f"  {name}: {1e3 * step:.1f} ms/step, +{results[name]['peak_mem_mb']:.0f} MB", flush=True)
    built.clear()
    gc.collect()
    if s.device.type == "cuda":
        torch.cuda.empty_cache()
    return results


def measure_evaluation(s: Setting, eval_batch: int, meter: MemoryMeter) -> dict[str, Any]:
    """Our evaluation (``inference_mode``, batch ``eval_batch``, one host read) against
    evaluation with the training batch under ``no_grad`` reading the count every batch
    (DomainBed's habit). Same network, precision and memory format in both."""
    alg = build(Config("eval", "ERM"), s)
    n = max(eval_batch, s.batch) * 2
    g = torch.Generator().manual_seed(1)
    x_all = torch.randn(n, 3, s.image_size, s.image_size, generator=g).to(s.device)
    y_all = torch.randint(0, s.classes, (n,), generator=g).to(s.device)

    def batches(bs: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(x_all[i:i + bs], y_all[i:i + bs]) for i in range(0, n, bs)]

    ours_batches, naive_batches = batches(eval_batch), batches(s.batch)

    def ours() -> None:
        evaluate(alg, ours_batches, s.device, alg._amp_dtype, alg._channels_last)

    def naive() -> None:
        alg.eval()
        correct = 0.0
        with torch.no_grad(), alg.autocast():
            for x, y in naive_batches:
                x = alg.prepare_input(x)
                correct += (alg.predict(x).argmax(1) == y).float().sum().item()
        alg.train()

    out: dict[str, Any] = {"images": n, "eval_batch": eval_batch, "train_batch": s.batch}
    for name, fn in (("inference_mode_large_batch", ours), ("no_grad_train_batch", naive)):
        fn()  # warm-up (cudnn picks algorithms for the new shapes)
        times = []
        for _ in range(s.repeats):
            synchronize(s.device)
            t0 = time.perf_counter()
            fn()
            synchronize(s.device)
            times.append(time.perf_counter() - t0)
        out[name] = {"images_per_s": n / statistics.median(times), "times_s": times}
    out["speedup"] = out["inference_mode_large_batch"]["images_per_s"] / out["no_grad_train_batch"]["images_per_s"]
    del alg
    gc.collect()
    return out


# ---------------------------------------------------------------------------------------
# Data pipeline: real JPEG files, the package's dataset and loaders
# ---------------------------------------------------------------------------------------
def write_jpeg_folder(root: Path, domains: int, classes: int, per_class: int, side: int = 256, seed: int = 0) -> int:
    """``root/<domain>/<class>/<i>.jpg``: smooth random colour fields plus a little noise
    (about the entropy of a photo, unlike white noise), saved with PIL at quality 90."""
    from PIL import Image

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

    def __init__(self, domain: Any, cache_side: int, transform: Callable):
        from PIL import Image

        from domainbed.datasets.images import load_rgb

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
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def loader_images_per_s(datasets: Sequence[Any], s: Setting, workers: int, batches: int) -> float:
    """Decoded-and-augmented images/s that ``train_loader`` delivers, one loader per domain
    as ``train`` builds them. Warm-up drains the batches prefetched while workers started,
    so the timed batches measure production, not a full queue."""
    from domainbed.lib.loaders import train_loader, zip_batches

    pin = s.device.type == "cuda"
    loaders = [train_loader(d, s.batch, seed, 0, workers, pin) for seed, d in enumerate(datasets)]
    it = zip_batches(loaders)
    warm = 4 * workers + 2 if workers > 0 else 2  # prefetch_factor (4) x workers, then two
    for _ in range(warm):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * s.images_per_step / (time.perf_counter() - t0)
    del it, loaders  # shuts the persistent workers down
    gc.collect()
    return rate


def measure_data(s: Setting, workers: int, per_class: int, batches: int) -> dict[str, Any]:
    from domainbed.datasets.images import ImageFolderDomains
    from domainbed.datasets.transforms import train_transform

    with tempfile.TemporaryDirectory(prefix="domainbed_bench_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        n_files = write_jpeg_folder(root, s.domains, 4, per_class)
        write_s = time.perf_counter() - t0
        ds = ImageFolderDomains(str(root), test_envs=[], hparams={"image_size": s.image_size, "data_augmentation": True})
        plain = loader_images_per_s(ds.datasets, s, workers, batches)
        cache_side = max(s.image_size, math.ceil(s.image_size * 256 / 224))
        t0 = time.perf_counter()
        cached_sets = [CachedDomain(d, cache_side, train_transform(s.image_size)) for d in ds.datasets]
        cache_build_s = time.perf_counter() - t0
        cached = loader_images_per_s(cached_sets, s, workers, batches)
    return {
        "files": n_files,
        "file_side_px": 256,
        "jpeg_quality": 90,
        "write_s": write_s,
        "workers_per_domain": workers,
        "worker_processes": workers * s.domains,
        "pin_memory": s.device.type == "cuda",
        "timed_batches": batches,
        "loader_images_per_s": plain,
        "cached_images_per_s": cached,
        "cache_side_px": cache_side,
        "cache_build_images_per_s": n_files / cache_build_s,
        "cache_gain": cached / plain,
    }


# ---------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    return f"{name} ({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads)"


def print_table(rows: dict[str, dict[str, Any]], reference: dict[str, Any] | None, title: str) -> None:
    print(f"\n{title}")
    header = f"{'config':<26}{'prec':>6}{'CL':>4}{'fused':>6}{'sync':>5}{'ms/step':>10}{'steps/s':>9}{'img/s':>9}{'peak MB':>10}{'x (b)':>7}"
    print(header)
    print("-" * len(header))
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:<26}  failed: {r['error']}")
            continue
        ratio = r["step_time_s"] / reference["step_time_s"] if reference else float("nan")
        print(
            f"{name:<26}{r['precision']:>6}{'y' if r['channels_last'] else 'n':>4}{'y' if r['fused_optimizer'] else 'n':>6}"
            f"{'y' if r['sync_every_step'] else 'n':>5}{1e3 * r['step_time_s']:>10.1f}{r['steps_per_s']:>9.2f}"
            f"{r['images_per_s']:>9.1f}{r['peak_mem_mb']:>10.0f}{ratio:>7.2f}"
        )


def print_ablations(rows: dict[str, dict[str, Any]]) -> None:
    print(f"\n{'ablation':<26}{'ms/step':>10}{'peak MB':>10}{'vs ref':>8}  reference / what changed")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:<26}  failed: {r['error']}")
            continue
        print(f"{name:<26}{1e3 * r['step_time_s']:>10.1f}{r['peak_mem_mb']:>10.0f}{r.get('over_reference', float('nan')):>8.2f}"
              f"  {r.get('reference', '')}: {r['label']}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/step_time.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--backbone", default=None, help=f"default {FULL['backbone']} ({QUICK['backbone']} with --quick)")
    p.add_argument("--image_size", type=int, default=None, help=f"default {FULL['image_size']} ({QUICK['image_size']} with --quick)")
    p.add_argument("--batch", type=int, default=None, help=f"images per source domain per step; default {FULL['batch']} ({QUICK['batch']} with --quick)")
    p.add_argument("--domains", type=int, default=3, help="number of source domains")
    p.add_argument("--classes", type=int, default=7)
    p.add_argument("--steps", type=int, default=None, help=f"timed steps per repeat; default {FULL['steps']} ({QUICK['steps']} with --quick)")
    p.add_argument("--warmup", type=int, default=None, help=f"untimed steps first; default {FULL['warmup']} ({QUICK['warmup']} with --quick)")
    p.add_argument("--repeats", type=int, default=None, help=f"timed repeats, median reported; default {FULL['repeats']}")
    p.add_argument("--eval_batch", type=int, default=None, help="evaluation batch of the ablation (default: hparam eval_batch_size)")
    p.add_argument("--workers", type=int, default=None,
                   help="loader workers per domain (default: the image datasets' N_WORKERS, as train uses, "
                        "capped so that all domains' workers together fit the CPU cores)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="autocast of our configurations (b)-(e); auto: the package default (bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's; 1 with --quick)")
    p.add_argument("--data_images", type=int, default=None, help="JPEG files per class and domain (default 8 with --quick, else 32)")
    p.add_argument("--data_batches", type=int, default=None, help="timed loader steps (default 10 with --quick, else 20)")
    p.add_argument("--json", default=None, help="also write the JSON result here")
    p.add_argument("--quick", action="store_true", help="small CPU configuration (ResNet-18, 64 px, batch 8; random weights)")
    p.add_argument("--ablations", action="store_true", help="switch each optimisation alone; evaluation ablation")
    p.add_argument("--compile", action="store_true", help="add torch.compile configurations to the ablations")
    p.add_argument("--skip_data", action="store_true", help="skip the JPEG data-pipeline measurement")
    return p


def resolve_setting(args: argparse.Namespace) -> Setting:
    if args.device == "auto":
        device = torch.device("cpu" if args.quick or not torch.cuda.is_available() else "cuda")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda asked for, but no CUDA GPU is visible; use --device cpu")
    base = QUICK if args.quick else FULL
    pick = lambda key: getattr(args, key) if getattr(args, key) is not None else base[key]  # noqa: E731
    s = Setting(device, pick("backbone"), pick("image_size"), pick("batch"), args.domains, args.classes,
                pick("steps"), pick("warmup"), pick("repeats"), args.precision)
    for key in ("image_size", "batch", "domains", "classes", "steps", "repeats"):
        if getattr(s, key) <= 0:
            raise SystemExit(f"--{key} must be positive, got {getattr(s, key)}")
    if s.warmup < 0:
        raise SystemExit(f"--warmup must be >= 0, got {s.warmup}")
    return s


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    s = resolve_setting(args)
    threads = args.threads if args.threads is not None else (QUICK["threads"] if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    meter = MemoryMeter(s.device)
    data = make_batches(s)
    t_start = time.perf_counter()
    print(f"step_time: {device_name(s.device)}, torch {torch.__version__}")
    print(f"{s.backbone} (random weights: pretrained false; speed does not depend on weight values), "
          f"{s.image_size} px, {s.domains} domains x {s.batch} images = {s.images_per_step} per step; "
          f"{s.warmup} warm-up + {s.repeats} x {s.steps} timed steps; memory: {meter.method}")

    print("Main configurations (timed side by side, repeats interleaved):")
    configs = measure_group(main_configs(), s, data, meter, prior_forward=("c_erm_ftlp",))
    t = {k: v["step_time_s"] for k, v in configs.items()}
    m = {k: v["peak_mem_mb"] for k, v in configs.items()}
    result: dict[str, Any] = {
        "ftlp_over_erm": t["c_erm_ftlp"] / t["b_erm"],
        "miro_over_erm": t["d_miro"] / t["b_erm"],
        "naive_over_ftlp": t["e_naive_ftlp"] / t["c_erm_ftlp"],
        "domainbed_over_ours": t["a_domainbed_erm"] / t["b_erm"],
        "ftlp_mem_over_erm": m["c_erm_ftlp"] / m["b_erm"] if m["b_erm"] > 0 else float("nan"),
        "miro_mem_over_erm": m["d_miro"] / m["b_erm"] if m["b_erm"] > 0 else float("nan"),
        "prior_forward_over_erm_step": configs["c_erm_ftlp"]["prior_forward_s"] / t["b_erm"],
        "device": str(s.device),
        "device_name": device_name(s.device),
        "torch": torch.__version__,
        "backbone": s.backbone,
        "pretrained": False,
        "image_size": s.image_size,
        "batch": s.batch,
        "domains": s.domains,
        "images_per_step": s.images_per_step,
        "steps": s.steps,
        "warmup": s.warmup,
        "repeats": s.repeats,
        "memory_method": meter.method,
        "torch_threads": torch.get_num_threads(),
        "precision_setting": s.precision,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "configs": configs,
    }
    print_table(configs, configs["b_erm"], "Main configurations (x (b): step time over our ERM; peak MB: memory the configuration adds)")

    if args.ablations:
        # A group of its own, with (b) and (c) rebuilt in it as the references.
        print("\nAblations (timed side by side with their references):")
        group = ablation_configs(configs["b_erm"], args.compile)
        ablations = measure_group(group, s, data, meter, tolerate_errors=True)
        for config in group:
            r, ref = ablations[config.name], ablations.get(config.reference, {})
            if "step_time_s" in r and "step_time_s" in ref:
                r["reference"] = config.reference
                r["over_reference"] = r["step_time_s"] / ref["step_time_s"]
        result["ablations"] = ablations
        print_ablations(ablations)
        erm_c = ablations.get("erm_compile", {}).get("step_time_s")
        for name in ("ftlp_compile",):
            if erm_c and "step_time_s" in ablations.get(name, {}):
                result[f"{name}_over_erm_compile"] = ablations[name]["step_time_s"] / erm_c
                print(f"{name} / erm_compile: {result[f'{name}_over_erm_compile']:.3f}")
        if erm_c:
            result["domainbed_over_ours_compiled"] = t["a_domainbed_erm"] * ablations["b_erm"]["step_time_s"] / (
                t["b_erm"] * erm_c)  # (a)/(b) from the main group times (b)/(b compiled) from this one
            print(f"domainbed / our compiled ERM: {result['domainbed_over_ours_compiled']:.3f}")
        eval_batch = args.eval_batch or int(hparams_registry.default_hparams("ERM", HPARAM_DATASET)["eval_batch_size"])
        result["evaluation"] = ev = measure_evaluation(s, eval_batch, meter)
        print(f"\nEvaluation: inference_mode, batch {eval_batch}: {ev['inference_mode_large_batch']['images_per_s']:.0f} img/s; "
              f"no_grad, batch {s.batch}, sync per batch: {ev['no_grad_train_batch']['images_per_s']:.0f} img/s "
              f"({ev['speedup']:.2f}x)")

    if not args.skip_data:
        from domainbed.datasets.images import ImageFolderDomains

        cap = max(1, (os.cpu_count() or 1) // s.domains)
        workers = min(ImageFolderDomains.N_WORKERS, cap) if args.workers is None else args.workers
        per_class = args.data_images or (8 if args.quick else 32)
        n_batches = args.data_batches or (10 if args.quick else 20)
        d = measure_data(s, workers, per_class, n_batches)
        d["consumed_images_per_s"] = {k: configs[k]["images_per_s"] for k in ("b_erm", "c_erm_ftlp")}
        d["bottleneck"] = {k: d["loader_images_per_s"] < v for k, v in d["consumed_images_per_s"].items()}
        d["bottleneck_with_cache"] = {k: d["cached_images_per_s"] < v for k, v in d["consumed_images_per_s"].items()}
        result["data"] = d
        print(f"\nData pipeline ({d['files']} JPEG files, 256 px, q90; {workers} workers per domain, "
              f"{d['worker_processes']} processes; pin_memory {d['pin_memory']}):")
        print(f"  ImageFolderDomains + train_loader: {d['loader_images_per_s']:.0f} img/s decoded and augmented")
        print(f"  decode+resize cached (uint8, {d['cache_side_px']} px), augment only: {d['cached_images_per_s']:.0f} img/s "
              f"({d['cache_gain']:.2f}x; cache built at {d['cache_build_images_per_s']:.0f} img/s)")
        for k, v in d["consumed_images_per_s"].items():
            verdict = "IS the bottleneck" if d["bottleneck"][k] else "is not the bottleneck"
            cached = "still is" if d["bottleneck_with_cache"][k] else "is not"
            print(f"  {k} consumes {v:.0f} img/s: the input pipeline {verdict}; with the cache it {cached}")
        if s.device.type == "cpu":
            print("  (on the CPU, loader workers and training share the same cores; measured apart here)")

    result["total_s"] = time.perf_counter() - t_start
    print(f"\nftlp_over_erm {result['ftlp_over_erm']:.3f}  miro_over_erm {result['miro_over_erm']:.3f}  "
          f"naive_over_ftlp {result['naive_over_ftlp']:.3f}  domainbed_over_ours {result['domainbed_over_ours']:.3f}  "
          f"ftlp_mem_over_erm {result['ftlp_mem_over_erm']:.3f}  prior_forward/erm_step {result['prior_forward_over_erm_step']:.3f}  "
          f"({result['total_s']:.0f} s)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, sort_keys=True), flush=True)
    return result


if __name__ == "__main__":
    main()
