"""What a run reports: the record of each checkpoint step (DomainBed's ``results.jsonl``
keys plus ours) and the closing summary printed to ``out.txt``. The same numbers go to
TensorBoard through :mod:`domainbed.training.tensorboard_log`."""

from __future__ import annotations

import argparse
import resource
from pathlib import Path
from typing import Any, Sequence

import torch

from domainbed.training.atomic_files import read_jsonl


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def make_record(step: int, epoch: float, step_time: float, evals: dict[str, float], logs: dict[str, float],
                device: torch.device, hparams: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    return {
        "step": step,
        "epoch": epoch,
        **logs,
        "step_time": step_time,
        **evals,
        "mem_gb": peak_memory_gb(device),
        "hparams": hparams,
        "args": vars(args),
    }


def print_summary(results: Path, environments: Sequence[str], test_envs: Sequence[int],
                  skipped_files: int, bad_images: int) -> None:
    """Skipped data (if any) and the final accuracy of every domain."""
    if skipped_files or bad_images:
        print(f"Data: skipped {skipped_files} empty or non-image files; skipped {bad_images} unreadable images "
              "(replaced by other images of their domain; counted over this process and its DataLoader workers, see err.txt)")
    records = read_jsonl(results)
    if not records:
        return
    last = records[-1]
    print("Final accuracy per domain" + (" (averaged model)" if last.get("averaged") else "") + ":")
    for i, name in enumerate(environments):
        role = "test" if i in test_envs else "train"
        print(f"  env{i} {name:>8} ({role}): in {last[f'env{i}_in_acc']:.4f}  out {last[f'env{i}_out_acc']:.4f}")
