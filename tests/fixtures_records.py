"""A synthetic sweep of ``results.jsonl`` files with accuracies known in closed form.

Tests write it with :func:`write_sweep` and compute expected table cells from
:func:`build_jobs` (the same jobs, in memory) with plain Python, independently of the
pandas code under test.

Layout: datasets ToyA and ToyB (3 envs each, not in the dataset registry, so their
columns are env0..env2); ToyA has ERM, ERM_FTLP, SWAD, SWAD_FTLP and MIRO with 3 trial
seeds and pair runs (two test envs) for leave-one-domain-out; ToyB has ERM and ERM_FTLP
with 2 trial seeds and no pair runs (ToyB is therefore missing under that rule). Two
hparam seeds, checkpoints at steps 0, 100, 200. The curves are chosen so the three
rules pick different checkpoints:

- training-domain validation picks hparams seed 1 at step 200 (train-env out +0.12),
  whose test env is shifted down by 0.08;
- the oracle (last step, test-env out) picks hparams seed 0 (+0.06 vs +0.04);
- leave-one-domain-out picks hparams seed 0 at step 100 (pair runs peak there).

SWAD-family runs end with an ``"averaged": true`` record at the last step, 0.05 above the
last ordinary checkpoint; one SWAD_FTLP run lacks it (the fallback case). Oddities:
one unfinished job with very high accuracies (no ``done``), one job that died before
its first checkpoint, and one finished job whose last line is truncated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

N_ENVS = 3
DATASETS = ("ToyA", "ToyB")
ALGORITHMS = {"ToyA": ("ERM", "ERM_FTLP", "SWAD", "SWAD_FTLP", "MIRO"), "ToyB": ("ERM", "ERM_FTLP")}
TRIALS = {"ToyA": (0, 1, 2), "ToyB": (0, 1)}
HPARAMS_SEEDS = (0, 1)
STEPS = (0, 100, 200)
PAIRS = {"ToyA": ((0, 1), (0, 2), (1, 2)), "ToyB": ()}

ALG_OFFSET = {"ERM": 0.0, "ERM_FTLP": 0.03, "SWAD": 0.02, "SWAD_FTLP": 0.045, "MIRO": 0.015}
SINGLE_CURVE = {0: (0.0, 0.10, 0.06), 1: (0.0, 0.04, 0.12)}
PAIR_CURVE = {0: (0.0, 0.15, 0.05), 1: (0.0, 0.09, 0.02)}
TEST_SHIFT = {0: 0.0, 1: 0.08}
AVERAGED_BONUS = 0.05

# The SWAD-family run that never wrote its averaged record.
FALLBACK_RUN = ("ToyA", "SWAD_FTLP", (0,), 0, 2)
# A finished job whose last line was cut mid-write.
TRUNCATED_RUN = ("ToyA", "ERM_FTLP", (1,), 0, 1)


def noise(dataset: str, algorithm: str, trial: int, env: int) -> float:
    """Small deterministic per-trial jitter, so standard errors are not zero."""
    return 0.001 * ((7 * trial + 3 * env + 5 * len(algorithm) + len(dataset)) % 11)


def accuracy(
    dataset: str,
    algorithm: str,
    test_envs: tuple[int, ...],
    hparams_seed: int,
    trial: int,
    step_index: int,
    env: int,
    split: str,
    averaged: bool = False,
) -> float:
    """The accuracy the synthetic job reports for one env and split."""
    curve = (SINGLE_CURVE if len(test_envs) == 1 else PAIR_CURVE)[hparams_seed][step_index]
    acc = 0.5 + 0.03 * env + ALG_OFFSET[algorithm] + noise(dataset, algorithm, trial, env) + curve
    if len(test_envs) == 1 and env in test_envs:
        acc -= TEST_SHIFT[hparams_seed]
    if split == "out":
        acc += 0.004 * ((env + hparams_seed) % 2)
    if averaged:
        acc += AVERAGED_BONUS
    return round(acc, 6)


@dataclass
class Job:
    """One synthetic training job and the records it wrote."""

    dataset: str
    algorithm: str
    test_envs: tuple[int, ...]
    hparams_seed: int
    trial_seed: int
    dirname: str
    records: list[dict[str, Any]] = field(default_factory=list)
    done: bool = True
    truncated: bool = False


def _record(job: Job, step_index: int, averaged: bool = False) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "step": STEPS[step_index],
        "epoch": STEPS[step_index] / 50,
        "step_time": 0.1,
        "mem_gb": 0.5,
        "loss": 2.0 - 0.5 * step_index + 0.1 * job.hparams_seed,
        "loss_ce": 1.9 - 0.5 * step_index,
        "hparams": {"lr": 1e-3 * (job.hparams_seed + 1), "batch_size": 32},
        "args": {
            "dataset": job.dataset,
            "algorithm": job.algorithm,
            "test_envs": list(job.test_envs),
            "hparams_seed": job.hparams_seed,
            "trial_seed": job.trial_seed,
            "seed": 0,
            "output_dir": f"/elsewhere/{job.dirname}",
        },
    }
    if job.algorithm.endswith("FTLP"):
        rec["ftlp_kl"] = 1.0 / (1 + step_index) + 0.1 * job.hparams_seed
    for env in range(N_ENVS):
        for split in ("in", "out"):
            rec[f"env{env}_{split}_acc"] = accuracy(
                job.dataset, job.algorithm, job.test_envs, job.hparams_seed, job.trial_seed, step_index, env, split, averaged
            )
        rec[f"env{env}_out_loss"] = 1.0 - rec[f"env{env}_out_acc"]
    if averaged:
        rec["averaged"] = True
    return rec


def build_jobs() -> list[Job]:
    """Every job of the synthetic sweep (finished or not) with its records."""
    jobs: list[Job] = []
    for dataset in DATASETS:
        runs = [(e,) for e in range(N_ENVS)] + list(PAIRS[dataset])
        for algorithm in ALGORITHMS[dataset]:
            for test_envs in runs:
                for hp in HPARAMS_SEEDS:
                    for trial in TRIALS[dataset]:
                        name = f"{dataset}_{algorithm}_te{'-'.join(map(str, test_envs))}_hp{hp}_tr{trial}"
                        # ToyB sits one level deeper: the loader must search recursively.
                        job = Job(dataset, algorithm, test_envs, hp, trial, ("part2/" if dataset == "ToyB" else "") + name)
                        job.records = [_record(job, i) for i in range(len(STEPS))]
                        key = (dataset, algorithm, test_envs, hp, trial)
                        if algorithm.startswith("SWAD") and key != FALLBACK_RUN:
                            job.records.append(_record(job, len(STEPS) - 1, averaged=True))
                        job.truncated = key == TRUNCATED_RUN
                        jobs.append(job)
    # Unfinished job that would win every rule if it were (wrongly) read.
    ghost = Job("ToyA", "ERM", (0,), 5, 0, "ToyA_ERM_te0_hp5_tr0_unfinished", done=False)
    ghost.records = [_record(Job("ToyA", "ERM", (0,), 0, 0, ghost.dirname), 0)]
    ghost.records[0]["args"]["hparams_seed"] = 5
    for key in list(ghost.records[0]):
        if key.endswith("_acc"):
            ghost.records[0][key] = 0.99
    jobs.append(ghost)
    # Job that died before its first checkpoint: only its logs exist.
    jobs.append(Job("ToyA", "ERM", (1,), 6, 0, "ToyA_ERM_te1_hp6_tr0_crashed", done=False))
    return jobs


def write_sweep(root: Path) -> list[Job]:
    """Write the synthetic sweep under ``root`` and return its jobs."""
    jobs = build_jobs()
    for job in jobs:
        out = Path(root) / job.dirname
        out.mkdir(parents=True, exist_ok=True)
        (out / "out.txt").write_text("log\n")
        (out / "err.txt").write_text("")
        if job.records:
            lines = [json.dumps(r, sort_keys=True) for r in job.records]
            text = "\n".join(lines) + "\n"
            if job.truncated:
                text += '{"step": 300, "env0_in_acc": 0.9'
            (out / "results.jsonl").write_text(text)
        if job.done:
            (out / "done").write_text("done\n")
    return jobs
