"""What every benchmark of ``step_time.py`` shares: the setting, a configuration and how to
build and step it, device synchronisation and the memory meter."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import resource
from dataclasses import dataclass, field
from typing import Any

import torch
from bench_variants import FoldedPriorFTLP, NaiveFTLP

from domainbed import hparams_registry
from domainbed.algorithms import Algorithm, get_algorithm_class

# Hparams come from the image-dataset family (lr 5e-5, batch 32, ...); the benchmark then
# overrides backbone, resolution and batch. Debug224 is a registered image-family dataset
# that needs no files.
HPARAM_DATASET = "Debug224"


@dataclass
class Config:
    """One measured configuration: an algorithm, hparam overrides and the loop's habits."""

    name: str
    algorithm: str  # a registry name, or a key of LOCAL_CLASSES
    overrides: dict[str, Any] = field(default_factory=dict)
    sync_every_step: bool = False  # .item() on every returned value at every step
    label: str = ""
    reference: str = "b_erm"  # the configuration an ablation is compared with


DOMAINBED_STYLE = {"precision": "fp32", "channels_last": False, "fused_optimizer": False}

LOCAL_CLASSES: dict[str, type[Algorithm]] = {"NaiveFTLP": NaiveFTLP, "FoldedPriorFTLP": FoldedPriorFTLP}


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

