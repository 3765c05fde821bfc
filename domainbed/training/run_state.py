"""What a checkpoint holds and how a run resumes from it.

A checkpoint is the whole state the loop needs to continue as if never stopped: the
algorithm, its optimizer, learning-rate schedule and grad scaler, every RNG state, the step, and the log sums
accumulated since the last record. Resuming loads the newest intact checkpoint
(``checkpoint.pt``, else ``checkpoint.prev.pt``) and drops the records written after it,
since they are recomputed identically; with no intact checkpoint the run starts again.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from domainbed.lib.seeding import rng_state, set_rng_state
from domainbed.training.atomic_files import clean_temp_files, read_jsonl, rewrite_jsonl
from domainbed.training.integrity import load_newest_intact


@dataclass
class LoopState:
    """The loop's own state besides the algorithm's: means since the last record, and
    whether training is over (the final checkpoint was saved but ``done`` not yet written)."""

    log_sums: dict[str, torch.Tensor] = field(default_factory=dict)
    log_count: int = 0
    finished: bool = False

    def add(self, logs: dict[str, torch.Tensor]) -> None:
        for k, v in logs.items():  # accumulate on the device: no host sync per step
            self.log_sums[k] = self.log_sums[k] + v if k in self.log_sums else v.clone()
        self.log_count += 1

    def means(self) -> dict[str, float]:
        return {k: (v / self.log_count).item() for k, v in self.log_sums.items()}

    def reset_logs(self) -> None:
        self.log_sums, self.log_count = {}, 0


def checkpoint_state(step: int, algorithm: Any, loop: LoopState) -> dict[str, Any]:
    """The state saved at ``step`` (after that step's update)."""
    return {
        "step": step,
        "algorithm": algorithm.state_dict(),
        "optimizer": algorithm.optimizer.state_dict(),
        "scaler": algorithm.scaler.state_dict(),
        "lr_schedule": algorithm.lr_schedule.state_dict(),
        "rng": rng_state(),
        "log_sums": {k: v.detach().cpu() for k, v in loop.log_sums.items()},
        "log_count": loop.log_count,
        "finished": loop.finished,
    }


def resume(out: Path, checkpoints: Sequence[Path], results: Path, algorithm: Any,
           device: torch.device) -> tuple[int, LoopState]:
    """Restore the newest intact checkpoint into ``algorithm`` (and the RNGs); returns the
    first step to run and the loop state. Removes temp files of interrupted writes and the
    records a resumed run writes again."""
    stale = clean_temp_files(out) + clean_temp_files(out / "tensorboard")
    if stale:
        print(f"Removed {len(stale)} temporary files of interrupted writes: {', '.join(stale)}")
    records = read_jsonl(results)
    state, _ = load_newest_intact(list(checkpoints), device)
    if state is None:
        if records or results.exists():
            rewrite_jsonl(results, [])  # records without a checkpoint cannot be continued
        return 0, LoopState()
    algorithm.load_state_dict(state["algorithm"])
    algorithm.optimizer.load_state_dict(state["optimizer"])
    algorithm.scaler.load_state_dict(state["scaler"])
    if "lr_schedule" in state:  # absent in checkpoints of earlier versions (constant lr)
        algorithm.lr_schedule.load_state_dict(state["lr_schedule"])
    set_rng_state(state["rng"])
    loop = LoopState({k: v.to(device) for k, v in state["log_sums"].items()}, int(state["log_count"]),
                     bool(state.get("finished", False)))
    start = int(state["step"]) + 1
    kept = [r for r in records if r.get("step", -1) < start and not r.get("averaged", False)]
    rewrite_jsonl(results, kept)
    print(f"Resuming from step {start} ({len(kept)} records kept)")
    return start, loop


def model_state(args: argparse.Namespace, hparams: dict[str, Any], dataset: Any, num_domains: int,
                network: torch.nn.Module) -> dict[str, Any]:
    """``model.pt``: DomainBed's keys, with a plain state dict (loads with ``weights_only=True``)."""
    return {
        "args": vars(args),
        "hparams": hparams,
        "input_shape": list(dataset.input_shape),
        "num_classes": dataset.num_classes,
        "num_domains": num_domains,
        # Tensors to the CPU; an extra state (SWAD's, a dict) as it is.
        "model_dict": {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in network.state_dict().items()},
    }
