"""Train one model: ``python -m domainbed.scripts.train`` with DomainBed's flags.

The output directory receives ``out.txt``/``err.txt`` (copies of stdout/stderr),
``results.jsonl`` (one record per checkpoint, DomainBed's format), ``tensorboard/``,
``model.pt`` and finally ``done``. Rerunning the same command resumes from the newest
intact checkpoint (``checkpoint.pt``, else the previous one, ``checkpoint.prev.pt``): model,
optimizer, scaler, RNG states and step, with no duplicated or partial record. SIGTERM (sent
by SLURM before pre-emption) exits 143 at any moment, after saving a checkpoint if it came
during training. Every file is replaced atomically and checkpoints are verified once on
disk, so a kill or a damaged file loses at most the steps since the last good checkpoint;
one ``train`` process at a time holds the output folder (README.md, "Failure modes", lists
each failure and what is kept).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from domainbed import hparams_registry
from domainbed.algorithms import get_algorithm_class
from domainbed.datasets import build_dataset, get_dataset_class, num_environments
from domainbed.datasets.base import DatasetError
from domainbed.datasets.splits import in_out_split, split_dataset
from domainbed.datasets.device_pipeline import select_train_loader
from domainbed.datasets.bad_images import bad_image_count
from domainbed.lib.checkpoint import (
    StorageError,
    append_jsonl,
    atomic_write_text,
    clean_temp_files,
    fault_point,
    read_jsonl,
    reset_faults,
    rewrite_jsonl,
    save_verified,
)
from domainbed.lib.evaluation import evaluate
from domainbed.lib.integrity import DAMAGED_SUFFIX, DamagedFile, load_newest_intact, load_verified
from domainbed.lib.loaders import eval_loader, train_loader, zip_batches
from domainbed.lib.misc import rng_state, seed_hash, set_global_seed, set_rng_state
from domainbed.lib.preemption import Preempted, PreemptionGuard
from domainbed.lib.run_lock import FolderBusy, folder_lock
from domainbed.lib.tb_trim import trim_event_files
from domainbed.lib.tee import tee_output
from domainbed.networks.weights import WeightsError

# Arguments that may differ between a run and its resumption.
RESUME_IGNORED = {"output_dir", "device", "num_workers"}
EXIT_PREEMPTED = 143
EXIT_DIVERGED = 3
EXIT_STORAGE = 1
USER_ERRORS = (ValueError, DatasetError, WeightsError, FolderBusy)
CHECKPOINT, PREVIOUS_CHECKPOINT = "checkpoint.pt", "checkpoint.prev.pt"


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m domainbed.scripts.train", description="Domain generalization training")
    p.add_argument("--data_dir", type=str, default="./domainbed/data/")
    p.add_argument("--dataset", type=str, default="RotatedMNISTSubset",
                   help="a registered dataset name, or the path of a ROOT/<domain>/<class>/<image> folder")
    p.add_argument("--algorithm", type=str, default="ERM")
    p.add_argument("--task", type=str, default="domain_generalization", choices=["domain_generalization", "domain_adaptation"])
    p.add_argument("--hparams", type=str, help="JSON-serialized hparams dict")
    p.add_argument("--hparams_seed", type=int, default=0, help="0 gives the default hparams")
    p.add_argument("--trial_seed", type=int, default=0, help="seeds the in/out splits and random hparams")
    p.add_argument("--seed", type=int, default=0, help="seeds everything else")
    p.add_argument("--steps", type=int, default=None, help="number of steps (default: the dataset's N_STEPS)")
    p.add_argument("--checkpoint_freq", type=int, default=None, help="evaluate every N steps")
    p.add_argument("--test_envs", type=int, nargs="+", default=[0])
    p.add_argument("--output_dir", type=str, default="train_output")
    p.add_argument("--holdout_fraction", type=float, default=0.2)
    p.add_argument("--uda_holdout_fraction", type=float, default=0,
                   help="fraction of test-domain data used as unlabeled data in domain adaptation")
    p.add_argument("--skip_model_save", action="store_true")
    p.add_argument("--save_model_every_checkpoint", action="store_true")
    # Ours.
    p.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--num_workers", type=int, default=None, help="data-loader workers (default: the dataset's)")
    p.add_argument("--weights", type=str, default=None, help="pretrained-weights file (same as hparam weights_path)")
    p.add_argument("--precision", type=str, default=None, choices=["auto", "bf16", "fp16", "fp32"],
                   help="autocast dtype (same as hparam precision)")
    p.add_argument("--channels_last", type=str, default=None, choices=["auto", "true", "false"],
                   help="channels_last memory format (same as hparam channels_last)")
    return p


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for CUDA but no CUDA GPU is visible; use --device cpu")
    return dev


def validate_args(args: argparse.Namespace) -> None:
    """Reject bad or conflicting arguments before anything is written."""
    if args.skip_model_save and args.save_model_every_checkpoint:
        raise ValueError("--skip_model_save and --save_model_every_checkpoint contradict each other; pass one")
    if args.task == "domain_adaptation" and args.uda_holdout_fraction <= 0:
        raise ValueError("--task domain_adaptation needs --uda_holdout_fraction > 0")
    if args.task == "domain_generalization" and args.uda_holdout_fraction > 0:
        raise ValueError("--uda_holdout_fraction only applies to --task domain_adaptation")
    for name in ("steps", "checkpoint_freq"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name} must be positive, got {value}")
    get_algorithm_class(args.algorithm)  # lists the valid names
    get_dataset_class(args.dataset)
    n_env = num_environments(args.dataset)
    bad = [e for e in args.test_envs if not 0 <= e < n_env]
    if bad:
        raise ValueError(f"--test_envs {bad} out of range: {args.dataset} has environments 0..{n_env - 1}")
    if len(set(args.test_envs)) != len(args.test_envs):
        raise ValueError(f"--test_envs has duplicates: {args.test_envs}")
    if len(args.test_envs) >= n_env:
        raise ValueError("at least one environment must remain for training")


def resolve_hparams(args: argparse.Namespace) -> dict[str, Any]:
    overrides = hparams_registry.parse_overrides(args.hparams)
    for flag, key in (("weights", "weights_path"), ("precision", "precision"), ("channels_last", "channels_last")):
        value = getattr(args, flag)
        if value is None:
            continue
        if key in overrides and overrides[key] != value:
            raise ValueError(f"--{flag} {value} conflicts with --hparams {key}={overrides[key]!r}; give it once")
        overrides[key] = value
    return hparams_registry.get_hparams(args.algorithm, args.dataset, args.hparams_seed, args.trial_seed, overrides)


def check_resume_args(out: Path, args: argparse.Namespace) -> None:
    """Refuse to resume a directory that was started with different arguments."""
    path = out / "args.json"
    mine = {k: v for k, v in vars(args).items() if k not in RESUME_IGNORED}
    if path.exists():
        theirs = {k: v for k, v in json.loads(path.read_text()).items() if k not in RESUME_IGNORED}
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            details = ", ".join(f"{k}: {theirs.get(k)!r} -> {mine.get(k)!r}" for k in diff)
            raise ValueError(
                f"{out} holds a run started with different arguments ({details}). "
                "Use another --output_dir, or delete that directory to start over."
            )
    else:
        atomic_write_text(path, json.dumps(vars(args), indent=2, sort_keys=True))


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def user_message(e: BaseException) -> str:
    """The message of a user error. Errors raised inside DataLoader workers come back with
    the worker's traceback in their text; keep only the original message."""
    text = str(e)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    reset_faults()
    with PreemptionGuard() as preempt:  # from the start: SIGTERM at any moment ends cleanly
        code = run_in_folder(args, preempt)
    if code:
        raise SystemExit(code)


def run_in_folder(args: argparse.Namespace, preempt: PreemptionGuard) -> int:
    """Validate, hold the output folder's lock, then train (or check a finished run); the exit status."""
    try:
        validate_args(args)
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        with folder_lock(out):
            fault_point("locked")
            if (out / "done").exists():
                return check_finished(out)
            check_resume_args(out, args)
            with tee_output(out / "out.txt", out / "err.txt"):
                return train_reporting_errors(args, out, preempt)
    except Preempted:
        print(preempt.notice(), file=sys.stderr)
        return EXIT_PREEMPTED
    except USER_ERRORS as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2


def train_reporting_errors(args: argparse.Namespace, out: Path, preempt: PreemptionGuard) -> int:
    """Train; expected failures become one ``error:`` line (in err.txt too) and an exit status."""
    try:
        return Trainer(args, out, preempt).run()
    except Preempted:
        print(preempt.notice(), file=sys.stderr)
        return EXIT_PREEMPTED
    except USER_ERRORS as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2
    except Diverged as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return EXIT_DIVERGED
    except StorageError as e:
        print(f"error: {e}; rerun the same command to resume from the last intact checkpoint", file=sys.stderr)
        return EXIT_STORAGE
    except BaseException:
        import traceback

        traceback.print_exc()  # keep the crash in err.txt; the job stays incomplete
        raise


def remove_checkpoints(out: Path) -> None:
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        (out / name).unlink(missing_ok=True)
        (out / (name + DAMAGED_SUFFIX)).unlink(missing_ok=True)


def check_finished(out: Path) -> int:
    """A rerun of a finished run: clean what a kill after ``done`` left, and check ``model.pt``."""
    remove_checkpoints(out)
    clean_temp_files(out)
    model = out / "model.pt"
    if model.exists():
        try:
            load_verified(model)
        except DamagedFile as e:
            raise ValueError(
                f"{out} is done, but {model} is damaged ({e.reason}). results.jsonl is complete and untouched. "
                "The final checkpoint was deleted when the run finished, so only training again rebuilds the "
                f"model: rm {out / 'done'} {model}, then rerun this command (it trains from step 0 and writes "
                "the same records)."
            ) from None
    print(f"{out} is already done; nothing to do")
    return 0


class Trainer:
    """One training run; split out of ``main`` so each phase reads on its own."""

    def __init__(self, args: argparse.Namespace, out: Path, preempt: PreemptionGuard):
        self.args, self.out, self.preempt = args, out, preempt
        self.results_path = out / "results.jsonl"
        self.ckpt_path = out / CHECKPOINT
        self.prev_ckpt_path = out / PREVIOUS_CHECKPOINT  # the last good one, kept until the next is in place

    # -------------------------------------------------------------- set-up
    def setup(self) -> None:
        args = self.args
        self.hparams = resolve_hparams(args)
        print("Args:", json.dumps(vars(args), sort_keys=True))
        print("HParams:", json.dumps(self.hparams, sort_keys=True))
        set_global_seed(args.seed)
        self.device = resolve_device(args.device)
        self.dataset = build_dataset(args.dataset, args.data_dir, args.test_envs, self.hparams)
        self.steps = args.steps or self.dataset.N_STEPS
        self.checkpoint_freq = args.checkpoint_freq or self.dataset.CHECKPOINT_FREQ
        self.num_workers = self.dataset.N_WORKERS if args.num_workers is None else args.num_workers
        self._make_splits()
        n_train = len(self.dataset) - len(args.test_envs)
        algorithm_class = get_algorithm_class(args.algorithm)
        self.algorithm = algorithm_class(self.dataset.input_shape, self.dataset.num_classes, n_train, self.hparams)
        self.algorithm.setup(self.device)

    def _make_splits(self) -> None:
        args = self.args
        self.in_splits, self.out_splits, self.uda_splits = [], [], []
        for i, env in enumerate(self.dataset.datasets):
            in_, out = in_out_split(env, i, args.trial_seed, args.holdout_fraction)
            if i in args.test_envs and args.uda_holdout_fraction > 0:
                uda, in_ = split_dataset(in_, int(len(in_) * args.uda_holdout_fraction), seed_hash(args.trial_seed, i))
                self.uda_splits.append((i, uda))
            self.in_splits.append(in_)
            self.out_splits.append(out)
        self.train_envs = [i for i in range(len(self.dataset)) if i not in args.test_envs]
        empty = [self.dataset.environments[i] for i in self.train_envs if len(self.in_splits[i]) == 0]
        if empty:
            raise ValueError(f"training domain(s) {empty} have no training examples after the holdout split")

    def _loaders(self, start_step: int) -> None:
        pin = self.device.type == "cuda"
        bs = int(self.hparams["batch_size"])
        balanced = bool(self.hparams.get("class_balanced", False))
        # Input pipeline (hparam input_pipeline): "device" decodes and augments on self.device.
        self.input_pipeline, make_train_loader = select_train_loader(self.hparams, self.dataset, self.device)
        print(f"Input pipeline: {self.input_pipeline}")
        self.train_loaders = [
            make_train_loader(self.in_splits[i], bs, seed_hash(self.args.seed, "train", i), start_step, self.num_workers, pin, balanced)
            for i in self.train_envs
        ]
        self.uda_loaders = [
            train_loader(split, bs, seed_hash(self.args.seed, "uda", i), start_step, self.num_workers, pin)
            for i, split in self.uda_splits
        ]
        ebs = int(self.hparams.get("eval_batch_size", 256))
        self.eval_loaders: dict[str, Any] = {}
        for i in range(len(self.dataset)):
            self.eval_loaders[f"env{i}_in"] = eval_loader(self.in_splits[i], ebs, self.num_workers, pin)
            self.eval_loaders[f"env{i}_out"] = eval_loader(self.out_splits[i], ebs, self.num_workers, pin)
        for i, split in self.uda_splits:
            self.eval_loaders[f"env{i}_uda"] = eval_loader(split, ebs, self.num_workers, pin)
        self.steps_per_epoch = min(len(self.in_splits[i]) / bs for i in self.train_envs)

    # -------------------------------------------------------------- checkpoints
    def _resume(self) -> int:
        """Load the newest intact checkpoint, if any; returns the first step to run."""
        self.log_sums: dict[str, torch.Tensor] = {}
        self.log_count = 0
        self.finished = False
        self.bad_images_at_start = bad_image_count()
        stale = clean_temp_files(self.out) + clean_temp_files(self.out / "tensorboard")
        if stale:
            print(f"Removed {len(stale)} temporary files of interrupted writes: {', '.join(stale)}")
        records = read_jsonl(self.results_path)
        state, _ = load_newest_intact([self.ckpt_path, self.prev_ckpt_path], self.device)
        if state is None:
            if records or self.results_path.exists():
                rewrite_jsonl(self.results_path, [])  # records without a checkpoint cannot be continued
            return 0
        self.algorithm.load_state_dict(state["algorithm"])
        self.algorithm.optimizer.load_state_dict(state["optimizer"])
        self.algorithm.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.log_sums = {k: v.to(self.device) for k, v in state["log_sums"].items()}
        self.log_count = int(state["log_count"])
        self.finished = bool(state.get("finished", False))
        start = int(state["step"]) + 1
        kept = [r for r in records if r.get("step", -1) < start and not r.get("averaged", False)]
        rewrite_jsonl(self.results_path, kept)
        print(f"Resuming from step {start} ({len(kept)} records kept)")
        return start

    def _save_checkpoint(self, step: int) -> None:
        alg = self.algorithm
        save_verified(
            {
                "step": step,
                "algorithm": alg.state_dict(),
                "optimizer": alg.optimizer.state_dict(),
                "scaler": alg.scaler.state_dict(),
                "rng": rng_state(),
                "log_sums": {k: v.detach().cpu() for k, v in self.log_sums.items()},
                "log_count": self.log_count,
                "finished": self.finished,
            },
            self.ckpt_path,
            previous=self.prev_ckpt_path,
        )

    def _save_model(self, path: Path) -> None:
        net = self.algorithm.eval_network()
        save_verified(
            {
                "args": vars(self.args),
                "hparams": self.hparams,
                "input_shape": list(self.dataset.input_shape),
                "num_classes": self.dataset.num_classes,
                "num_domains": len(self.train_envs),
                "model_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            },
            path,
        )

    # -------------------------------------------------------------- evaluation
    def _evaluate(self, network: Any) -> dict[str, float]:
        alg = self.algorithm
        results: dict[str, float] = {}
        for name, loader in self.eval_loaders.items():
            acc, loss = evaluate(network, loader, self.device, alg._amp_dtype, alg._channels_last)
            fault_point("eval")
            results[f"{name}_acc"] = acc
            if name.endswith("_out"):
                results[f"{name}_loss"] = loss
        val = [results[f"env{i}_out_loss"] for i in self.train_envs if len(self.out_splits[i]) > 0]
        results["val_loss"] = sum(val) / len(val) if val else float("nan")
        return results

    def _record(self, step: int, step_time: float, evals: dict[str, float], logs: dict[str, float]) -> dict[str, Any]:
        return {
            "step": step,
            "epoch": step / self.steps_per_epoch,
            **logs,
            "step_time": step_time,
            **evals,
            "mem_gb": peak_memory_gb(self.device),
            "hparams": self.hparams,
            "args": vars(self.args),
        }

    # -------------------------------------------------------------- loop
    def run(self) -> int:
        from torch.utils.tensorboard import SummaryWriter

        self.setup()
        start = self._resume()
        self._loaders(start)
        # Points the steps after the checkpoint wrote are recomputed: remove them from the files
        # (purge_step alone only hides them from TensorBoard). The averaged model is redone too.
        trim_event_files(self.out / "tensorboard", lambda tag, step: step >= start or tag.startswith("averaged/"))
        writer = SummaryWriter(log_dir=str(self.out / "tensorboard"), purge_step=start if start > 0 else None)
        try:
            return self._train(writer, start)
        finally:
            writer.close()  # also when leaving on SIGTERM or an error: flushes what was logged

    def _train(self, writer: Any, start: int) -> int:
        from tqdm import tqdm

        alg = self.algorithm
        batches = zip_batches(self.train_loaders)
        uda_batches = zip_batches(self.uda_loaders) if self.uda_loaders else None
        interval_start, interval_steps = time.perf_counter(), 0
        progress = tqdm(total=self.steps, initial=start, desc=f"{self.args.algorithm} {self.args.dataset}",
                        unit="step", file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
        with self.preempt.during("training") as preempt:
            step = start
            while step < self.steps and not self.finished:
                minibatches = next(batches)
                unlabeled = [x for x, _ in next(uda_batches)] if uda_batches else None
                logs = alg.update(minibatches, unlabeled)
                fault_point("step")
                for k, v in logs.items():  # accumulate on the device: no host sync per step
                    self.log_sums[k] = self.log_sums[k] + v if k in self.log_sums else v.clone()
                self.log_count += 1
                interval_steps += 1
                alg.on_step_end(step)
                progress.update(1)
                if step % self.checkpoint_freq == 0 or step == self.steps - 1 or alg.should_stop:
                    means = {k: (v / self.log_count).item() for k, v in self.log_sums.items()}
                    step_time = (time.perf_counter() - interval_start) / max(interval_steps, 1)
                    evals = self._evaluate(alg)
                    alg.on_evaluation(step, evals)
                    record = self._record(step, step_time, evals, means)
                    append_jsonl(self.results_path, record)
                    fault_point("after_record")
                    self._tensorboard(writer, record)
                    progress.set_postfix(loss=f"{means.get('loss', float('nan')):.3f}")
                    if not all(math.isfinite(v) for k, v in means.items()):
                        writer.close()
                        raise Diverged(
                            f"loss became non-finite by step {step} ({means}); the run stops and is not marked done. "
                            "Lower the learning rate or check the data."
                        )
                    self.log_sums, self.log_count = {}, 0
                    self.finished = alg.should_stop or step == self.steps - 1
                    self._save_checkpoint(step)
                    fault_point("after_checkpoint")
                    if self.args.save_model_every_checkpoint:
                        self._save_model(self.out / f"model_step{step}.pt")
                    interval_start, interval_steps = time.perf_counter(), 0
                elif preempt.requested:
                    self._save_checkpoint(step)
                if preempt.requested:
                    print(f"SIGTERM received: checkpoint saved at step {step}; rerun the same command to resume",
                          file=sys.stderr)
                    progress.close()
                    writer.close()
                    return EXIT_PREEMPTED
                step += 1
        progress.close()
        self.preempt.enter("finishing")
        self._finish(writer)
        return 0

    def _finish(self, writer: Any) -> None:
        alg = self.algorithm
        alg.on_train_end(self._bn_batches())
        if alg.eval_network() is not alg:
            # SWAD: the averaged model is what is reported, saved and evaluated.
            evals = self._evaluate(alg.eval_network())
            last = read_jsonl(self.results_path)[-1]
            record = {**last, **evals, "averaged": True}
            append_jsonl(self.results_path, record)
            fault_point("after_record")
            self._tensorboard(writer, record, prefix="averaged/")
            print("Averaged model:", json.dumps({k: round(v, 4) for k, v in evals.items()}))
        writer.close()
        if not self.args.skip_model_save:
            self._save_model(self.out / "model.pt")
        fault_point("before_done")
        (self.out / "done").write_text("done\n")
        self.preempt.enter("done")
        fault_point("after_done")
        remove_checkpoints(self.out)  # the finished run no longer needs optimizer state
        self._print_summary()

    def _bn_batches(self):
        """Training images for recomputing BatchNorm statistics of an averaged model."""
        loaders = zip_batches(self.train_loaders)
        for minibatches in loaders:
            yield torch.cat([x for x, _ in minibatches])

    def _tensorboard(self, writer: Any, record: dict[str, Any], prefix: str = "") -> None:
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                group = "acc" if key.endswith("_acc") else "loss" if "loss" in key or "penalty" in key or "kl" in key else "misc"
                writer.add_scalar(f"{prefix}{group}/{key}", value, record["step"])
        writer.flush()

    def _print_summary(self) -> None:
        skipped = len(getattr(self.dataset, "skipped_files", []))
        bad = bad_image_count() - self.bad_images_at_start
        if skipped or bad:
            print(f"Data: skipped {skipped} empty or non-image files; skipped {bad} unreadable images "
                  "(replaced by other images of their domain; counted in this process only, see err.txt)")
        records = read_jsonl(self.results_path)
        if not records:
            return
        last = records[-1]
        names = self.dataset.environments
        print("Final accuracy per domain" + (" (averaged model)" if last.get("averaged") else "") + ":")
        for i, name in enumerate(names):
            role = "test" if i in self.args.test_envs else "train"
            print(f"  env{i} {name:>8} ({role}): in {last[f'env{i}_in_acc']:.4f}  out {last[f'env{i}_out_acc']:.4f}")


if __name__ == "__main__":
    main()
