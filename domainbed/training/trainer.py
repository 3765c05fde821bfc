"""The training loop of one run: set-up, steps, evaluations, checkpoints and the end.

Every ``checkpoint_freq`` steps (and at the last step, or when the algorithm asks to
stop) the loop evaluates every split, appends one record, then saves a checkpoint; SIGTERM
or SIGINT during training saves a checkpoint at the end of the current step and returns 143
or 130. At the
end an averaging algorithm (SWAD) is evaluated once more, then ``model.pt`` and ``done``
are written, in that order. ``model_best.pt`` holds the weights training-domain validation
selects (:mod:`.best_model`), replaced after each checkpoint that improves on it. The output folder itself is :mod:`.run_folder`'s business.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from domainbed.algorithms import get_algorithm_class
from domainbed.datasets import build_dataset
from domainbed.datasets.bad_images import bad_image_count
from domainbed.datasets.splits import in_out_split, uda_split
from domainbed.lib.errors import UserError
from domainbed.lib.seeding import seed_hash, set_global_seed
from domainbed.training.arguments import resolve_device, resolve_hparams
from domainbed.training.atomic_files import append_jsonl, read_jsonl, save_verified
from domainbed.training.best_model import BestModelKeeper
from domainbed.training.evaluation import evaluate_split
from domainbed.training.faults import fault_point
from domainbed.training.input_pipeline import select_train_loader
from domainbed.training.loaders import default_workers, eval_loader, zip_batches
from domainbed.training.preemption import PreemptionGuard
from domainbed.training.provenance import record_provenance
from domainbed.training.run_folder import (
    CHECKPOINT,
    PREVIOUS_CHECKPOINT,
    Diverged,
    mark_done,
    remove_checkpoints,
)
from domainbed.training.run_report import make_record, print_summary
from domainbed.training.run_state import LoopState, checkpoint_state, model_state, resume
from domainbed.training.tensorboard_log import trim_event_files, write_tensorboard


class Trainer:
    """One training run in an output folder that the caller holds (locked, arguments checked)."""

    def __init__(self, args: argparse.Namespace, out: Path, preempt: PreemptionGuard):
        self.args, self.out, self.preempt = args, out, preempt
        self.results_path = out / "results.jsonl"
        self.ckpt_path = out / CHECKPOINT
        self.prev_ckpt_path = out / PREVIOUS_CHECKPOINT  # the last good one, kept until the next is in place
        self.loop = LoopState()

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
        self.num_workers = default_workers(self.dataset.N_WORKERS) if args.num_workers is None else args.num_workers
        self._make_splits()
        algorithm_class = get_algorithm_class(args.algorithm)
        self.algorithm = algorithm_class(self.dataset.input_shape, self.dataset.num_classes, len(self.train_envs),
                                         self.hparams)
        self.algorithm.setup(self.device)
        self.algorithm.configure_schedule(self.steps)  # hparams optimizer / lr_schedule (algorithms/optim.py)

    def _make_splits(self) -> None:
        args = self.args
        self.in_splits, self.out_splits = [], []
        self.uda_splits: dict[int, Any] = {}  # test env -> its unlabeled split (uda_holdout_fraction > 0)
        for i, env in enumerate(self.dataset.datasets):
            in_, out = in_out_split(env, i, args.trial_seed, args.holdout_fraction)
            if i in args.test_envs and args.uda_holdout_fraction > 0:
                # DomainBed's unlabeled split of a test domain, also made (and evaluated) for
                # domain generalization, so that both tasks evaluate the same in split.
                in_, self.uda_splits[i] = uda_split(in_, i, args.trial_seed, args.uda_holdout_fraction)
            self.in_splits.append(in_)
            self.out_splits.append(out)
        self.train_envs = [i for i in range(len(self.dataset)) if i not in args.test_envs]
        if args.task == "domain_adaptation":
            few = [self.dataset.environments[i] for i in args.test_envs if len(self.uda_splits.get(i, ())) == 0]
            if few:
                raise UserError(f"test domain(s) {few} have no unlabeled examples for domain adaptation after the "
                                f"split (--uda_holdout_fraction {args.uda_holdout_fraction}); raise it or add images")
        empty = [self.dataset.environments[i] for i in self.train_envs if len(self.in_splits[i]) == 0]
        if empty:
            raise UserError(f"training domain(s) {empty} have no training examples after the holdout split; "
                            "lower --holdout_fraction or add images")

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
        # Domain adaptation: one batch of each test domain's unlabeled split per step.
        self.uda_loaders = [
            make_train_loader(self.uda_splits[i], bs, seed_hash(self.args.seed, "uda", i), start_step, self.num_workers, pin, balanced)
            for i in sorted(self.uda_splits)
        ] if self.args.task == "domain_adaptation" else []
        ebs = int(self.hparams.get("eval_batch_size", 256))
        self.eval_loaders: dict[str, Any] = {}
        for i in range(len(self.dataset)):
            for split, data in (("in", self.in_splits[i]), ("out", self.out_splits[i])):
                self.eval_loaders[f"env{i}_{split}"] = eval_loader(data, ebs, self.num_workers, pin,
                                                                   seed_hash(self.args.seed, "eval", i, split))
        for i, data in sorted(self.uda_splits.items()):  # record key env{i}_uda_acc, i the test env's index
            self.eval_loaders[f"env{i}_uda"] = eval_loader(data, ebs, self.num_workers, pin,
                                                           seed_hash(self.args.seed, "eval", i, "uda"))
        self.steps_per_epoch = min(len(self.in_splits[i]) / bs for i in self.train_envs)

    # -------------------------------------------------------------- checkpoints and evaluation
    def _save_checkpoint(self, step: int) -> None:
        save_verified(checkpoint_state(step, self.algorithm, self.loop), self.ckpt_path, previous=self.prev_ckpt_path)

    def _save_model(self, path: Path, best: dict[str, Any] | None = None) -> None:
        net = self.algorithm.eval_network()
        state = model_state(self.args, self.hparams, self.dataset, len(self.train_envs), net)
        save_verified({**state, "best": best} if best is not None else state, path)

    def _evaluate(self, network: Any) -> dict[str, float]:
        results: dict[str, float] = {}
        for name, loader in self.eval_loaders.items():
            # The algorithm's own input path and precision, also for a bare averaged network.
            split = evaluate_split(network, loader, inputs=self.algorithm)
            fault_point("eval")
            results[f"{name}_acc"] = split.acc
            if name.endswith("_out"):
                results[f"{name}_loss"] = split.nll
            # Calibration: new keys only (DomainBed's readers ignore them); ECE with 15 equal-width bins.
            results[f"{name}_nll"] = split.nll
            results[f"{name}_ece"] = split.ece
        val = [results[f"env{i}_out_loss"] for i in self.train_envs if len(self.out_splits[i]) > 0]
        results["val_loss"] = sum(val) / len(val) if val else float("nan")
        return results

    # -------------------------------------------------------------- loop
    def run(self) -> int:
        """Set up, resume, train and finish; the exit status (0, or 143 / 130 after SIGTERM / SIGINT)."""
        from torch.utils.tensorboard import SummaryWriter

        self.setup()
        provenance = record_provenance(self.out)
        print("Provenance:", json.dumps({k: v for k, v in provenance.items() if k != "resumed_with"}, sort_keys=True))
        self.bad_images_at_start = bad_image_count()
        start, self.loop = resume(self.out, [self.ckpt_path, self.prev_ckpt_path], self.results_path,
                                  self.algorithm, self.device)
        # model_best.pt: the weights training-domain validation selects (not with --skip_model_save).
        self.best = BestModelKeeper(self.out, self.args.test_envs, self._save_model, not self.args.skip_model_save)
        self.best.resume(read_jsonl(self.results_path), start)
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

        alg, loop = self.algorithm, self.loop
        batches = zip_batches(self.train_loaders)
        unlabeled = zip_batches(self.uda_loaders) if self.uda_loaders else None
        interval_start, interval_steps = time.perf_counter(), 0
        progress = tqdm(total=self.steps, initial=start, desc=f"{self.args.algorithm} {self.args.dataset}",
                        unit="step", file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
        with self.preempt.during("training") as preempt:
            step = start
            while step < self.steps and not loop.finished:
                alg.apply_lr_schedule(step)
                if unlabeled is None:
                    loop.add(alg.update(next(batches)))
                else:  # as DomainBed: the inputs of each test domain's batch, on the device
                    loop.add(alg.update(next(batches), [alg.prepare_input(x) for x, _ in next(unlabeled)]))
                fault_point("step")
                interval_steps += 1
                alg.on_step_end(step)
                progress.update(1)
                if step % self.checkpoint_freq == 0 or step == self.steps - 1 or alg.should_stop:
                    means = loop.means()
                    step_time = (time.perf_counter() - interval_start) / max(interval_steps, 1)
                    evals = self._evaluate(alg)
                    alg.on_evaluation(step, evals)
                    record = make_record(step, step / self.steps_per_epoch, step_time, evals, means, self.device,
                                         self.hparams, self.args)
                    append_jsonl(self.results_path, record)
                    fault_point("after_record")
                    write_tensorboard(writer, record)
                    progress.set_postfix(loss=f"{means.get('loss', float('nan')):.3f}")
                    if not all(math.isfinite(v) for v in means.values()):
                        raise Diverged(
                            f"loss became non-finite by step {step} ({means}); the run stops and is not marked done. "
                            "Lower the learning rate or check the data."
                        )
                    loop.reset_logs()
                    loop.finished = alg.should_stop or step == self.steps - 1
                    self._save_checkpoint(step)
                    fault_point("after_checkpoint")
                    self.best.offer(step, evals)
                    if self.args.save_model_every_checkpoint:
                        self._save_model(self.out / f"model_step{step}.pt")
                    interval_start, interval_steps = time.perf_counter(), 0
                elif preempt.requested:
                    self._save_checkpoint(step)
                if preempt.requested:
                    progress.close()
                    print(f"{preempt.signal_name} received: checkpoint saved at step {step}; rerun the same command "
                          "to resume", file=sys.stderr)
                    return preempt.exit_code
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
            write_tensorboard(writer, record, prefix="averaged/")
            self.best.keep_averaged(int(record["step"]), evals)
            print("Averaged model:", json.dumps({k: round(v, 4) for k, v in evals.items()}))
        writer.close()
        if not self.args.skip_model_save:
            self._save_model(self.out / "model.pt")
        fault_point("before_done")
        mark_done(self.out)
        self.preempt.enter("done")
        fault_point("after_done")
        remove_checkpoints(self.out)  # the finished run no longer needs optimizer state
        print_summary(self.results_path, self.dataset.environments, self.args.test_envs,
                      len(getattr(self.dataset, "skipped_files", [])), bad_image_count() - self.bad_images_at_start)

    def _bn_batches(self) -> Iterator[torch.Tensor]:
        """Training images for recomputing BatchNorm statistics of an averaged model."""
        for minibatches in zip_batches(self.train_loaders):
            yield torch.cat([x for x, _ in minibatches])
