"""The command line of ``train``: DomainBed's flags plus ours, their validation and the
hparams they resolve to. Every check here runs before anything is written; a bad value is
a :class:`~domainbed.lib.errors.UserError` whose message says what to pass instead."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from domainbed import hparams_registry
from domainbed.algorithms import get_algorithm_class
from domainbed.datasets import get_dataset_class, num_environments
from domainbed.lib.environments import check_test_envs
from domainbed.lib.errors import UserError

TASKS = ("domain_generalization", "domain_adaptation")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m domainbed.scripts.train", description="Domain generalization training")
    p.add_argument("--data_dir", type=str, default="./domainbed/data/")
    p.add_argument("--dataset", type=str, default="RotatedMNISTSubset",
                   help="a registered dataset name, or the path of a ROOT/<domain>/<class>/<image> folder")
    p.add_argument("--algorithm", type=str, default="ERM")
    p.add_argument("--task", type=str, default="domain_generalization", choices=list(TASKS),
                   help="domain_adaptation also passes update() unlabeled batches of the test domains")
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
                   help="part of each test domain's in split set aside as unlabeled data (records env{i}_uda_acc); "
                   "domain_adaptation trains on it")
    p.add_argument("--skip_model_save", action="store_true")
    p.add_argument("--save_model_every_checkpoint", action="store_true")
    # Ours.
    p.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--num_workers", type=int, default=None, help="data-loader workers (default: the dataset's, at most the cores this process may use)")
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
        raise UserError(f"--device {name} asked for CUDA but no CUDA GPU is visible; use --device cpu")
    return dev


def validate_args(args: argparse.Namespace) -> None:
    """Reject bad or conflicting arguments before anything is written."""
    if args.skip_model_save and args.save_model_every_checkpoint:
        raise UserError("--skip_model_save and --save_model_every_checkpoint contradict each other; pass one")
    if not 0.0 <= args.uda_holdout_fraction < 1.0:
        raise UserError(f"--uda_holdout_fraction must be in [0, 1), got {args.uda_holdout_fraction}")
    if args.task == "domain_adaptation" and args.uda_holdout_fraction == 0:
        # DomainBed fails later with "Not enough unlabeled samples for domain adaptation".
        raise UserError("--task domain_adaptation needs unlabeled test-domain data: pass --uda_holdout_fraction "
                        "above 0 (e.g. 0.2), the part of each test domain's in split given to update() unlabeled")
    for name in ("steps", "checkpoint_freq"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name} must be positive, got {value}")
    get_algorithm_class(args.algorithm)  # lists the valid names
    get_dataset_class(args.dataset)
    check_test_envs(args.test_envs, num_environments(args.dataset), dataset=args.dataset)


def resolve_hparams(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults or a seeded draw, then ``--hparams`` and the flags that mirror an hparam."""
    overrides = hparams_registry.parse_overrides(args.hparams)
    for flag, key in (("weights", "weights_path"), ("precision", "precision"), ("channels_last", "channels_last")):
        value = getattr(args, flag)
        if value is None:
            continue
        if key in overrides and overrides[key] != value:
            raise UserError(f"--{flag} {value} conflicts with --hparams {key}={overrides[key]!r}; give it once")
        overrides[key] = value
    return hparams_registry.get_hparams(args.algorithm, args.dataset, args.hparams_seed, args.trial_seed, overrides)
