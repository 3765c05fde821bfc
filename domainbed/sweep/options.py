"""The sweep's flags (DomainBed's, plus ours), how they are parsed and how they are checked.

``--sweep FILE`` (a path, or the name of a packaged sweep) is a JSON object whose keys are
these flag names plus ``description``; :mod:`domainbed.sweep.sweep_file` reads it through
the same flag definitions. Flags given on the command line win over the file;
``--hparams`` is merged key by key over the file's ``hparams``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any, Iterable

from domainbed import algorithms, datasets
from domainbed.launchers import get_launcher, launcher_names
from domainbed.sweep.sweep_file import load_sweep_file, resolve_sweep_path

DEFAULT_TRAIN_MODULE = "domainbed.scripts.train"
PER_DATASET_KEYS = ("steps", "checkpoint_freq")
_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def json_object(text: str) -> dict[str, Any]:
    """argparse type for ``--hparams`` and ``--per_dataset``: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object like '{{\"lr\": 1e-4}}', got {text!r}")
    return value


def build_parser(commands: Iterable[str], description: str | None = None) -> argparse.ArgumentParser:
    """The command-line interface; every flag except ``--sweep`` may also come from a sweep file."""
    # No abbreviations: "--s" must not silently mean "--sweep" (or "--steps").
    parser = argparse.ArgumentParser(prog="python -m domainbed.scripts.sweep", description=description, allow_abbrev=False)
    parser.add_argument("command", choices=sorted(commands))
    parser.add_argument("--sweep", help="JSON sweep definition: a path or a name under sweeps/ (e.g. ftlp_paper)")
    jobs = parser.add_argument_group("jobs (DomainBed's flags)")
    jobs.add_argument("--datasets", nargs="+", type=str)
    jobs.add_argument("--algorithms", nargs="+", type=str)
    jobs.add_argument("--task", choices=["domain_generalization", "domain_adaptation"], default="domain_generalization")
    jobs.add_argument("--n_hparams_from", type=int, default=0)
    jobs.add_argument("--n_hparams", type=int, default=20)
    jobs.add_argument("--output_dir", type=str, help="sweep folder; one sub-folder per job")
    jobs.add_argument("--data_dir", type=str, default="./domainbed/data/",
                      help="dataset root (unused by the offline MNIST subsets and Debug datasets)")
    jobs.add_argument(
        "--seed", type=int, default=0, help="accepted for DomainBed command lines; job seeds come from seed_hash"
    )
    jobs.add_argument("--n_trials", type=int, default=3)
    jobs.add_argument("--command_launcher", type=str, default="local", help=f"one of {', '.join(launcher_names())}")
    jobs.add_argument("--steps", type=int, default=None)
    jobs.add_argument("--hparams", type=json_object, default=None, help="JSON object of fixed hparams")
    jobs.add_argument("--holdout_fraction", type=float, default=0.2)
    jobs.add_argument("--uda_holdout_fraction", type=float, default=None,
                      help="part of each test domain's in split given unlabeled to the algorithm "
                      "(needed by --task domain_adaptation; passed to train only when set)")
    jobs.add_argument("--single_test_envs", action="store_true")
    jobs.add_argument("--skip_confirmation", action="store_true")
    ours = parser.add_argument_group("jobs (ours)")
    ours.add_argument("--train_module", type=str, default=DEFAULT_TRAIN_MODULE, help="module run with python -m")
    ours.add_argument("--checkpoint_freq", type=int, default=None)
    ours.add_argument("--test_envs_subset", nargs="+", type=int, default=None, help="test envs to keep")
    ours.add_argument("--device", type=str, default=None, help="passed to train (not part of the job hash)")
    ours.add_argument("--skip_model_save", action="store_true")
    ours.add_argument(
        "--paired_seeds", action="store_true",
        help="job seed independent of the algorithm (seed_hash(dataset, test_envs, hparams_seed, trial)), "
        "so algorithms are compared on the same data order and init",
    )
    ours.add_argument(
        "--per_dataset", type=json_object, default=None,
        help='JSON {"DATASET": {"steps": N, "checkpoint_freq": N}}: values for the datasets named, '
        "over --steps / --checkpoint_freq (pass '{}' to drop a sweep file's)",
    )
    launch = parser.add_argument_group("launchers (flags win over DOMAINBED_SLURM_* environment variables)")
    launch.add_argument("--slurm_partition", type=str, default=None)
    launch.add_argument("--slurm_time", type=int, default=None, help="minutes per job (default 1440)")
    launch.add_argument("--slurm_gpus", type=int, default=None, help="GPUs per node (default 1)")
    launch.add_argument("--slurm_cpus", type=int, default=None, help="CPUs per task (default 8)")
    launch.add_argument("--slurm_mem", type=float, default=None, help="GB per job")
    launch.add_argument("--slurm_array_parallelism", type=int, default=None)
    launch.add_argument("--slurm_local", action="store_true", help="run through submitit's LocalExecutor")
    launch.add_argument("--slurm_wait", action="store_true", help="wait for the Slurm jobs and count failures")
    launch.add_argument("--submitit_dir", type=str, default=None, help="submitit logs (default OUTPUT_DIR/.submitit)")
    launch.add_argument("--threads_per_job", type=int, default=None,
                        help="local / multi_gpu: OMP threads per job (default: free cores / jobs at once; "
                        "OMP_NUM_THREADS in the environment also sets it)")
    launch.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse flags over the sweep file's values over the defaults, then validate them."""
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--sweep")
    sweep_file = pre.parse_known_args(argv)[0].sweep
    file_values = load_sweep_file(resolve_sweep_path(sweep_file), parser) if sweep_file else {}
    file_hparams = file_values.pop("hparams", None) or {}
    parser.set_defaults(**file_values)  # defaults lose to explicit flags: that is the precedence we want
    args = parser.parse_args(argv)
    args.hparams = {**file_hparams, **(args.hparams or {})}
    validate(args)
    return args


def _check_names(kind: str, given: Iterable[str], known: list[str], is_folder: bool = False) -> None:
    unknown = [name for name in given if name not in known and not (is_folder and datasets.is_folder_dataset(name))]
    if unknown:
        raise ValueError(f"unknown {kind}(s) {', '.join(unknown)}; valid {kind}s: {', '.join(sorted(known))}")


def check_per_dataset(per_dataset: dict[str, Any]) -> None:
    """Known dataset names mapping to ``{steps, checkpoint_freq}`` positive integers."""
    _check_names("dataset", per_dataset, datasets.dataset_names(), is_folder=True)
    for name, values in per_dataset.items():
        where = f"--per_dataset {name!r}"
        if not isinstance(values, dict) or not values or set(values) - set(PER_DATASET_KEYS):
            raise ValueError(f"{where} must be an object with keys among {', '.join(PER_DATASET_KEYS)}, got {values!r}")
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}: {key} must be a positive integer, got {value!r}")


def validate(args: argparse.Namespace) -> None:
    """Reject what argparse cannot: missing values, empty ranges, unknown names."""
    for name in ("datasets", "algorithms", "output_dir"):
        if not getattr(args, name):
            raise ValueError(f"--{name} is required (on the command line or in the --sweep file)")
    if args.n_trials < 1:
        raise ValueError(f"--n_trials must be at least 1, got {args.n_trials}")
    if not 0 <= args.n_hparams_from < args.n_hparams:
        raise ValueError(
            f"hparams seeds are range(n_hparams_from, n_hparams) = range({args.n_hparams_from}, {args.n_hparams}): "
            "it must be non-empty and start at 0 or more"
        )
    if args.threads_per_job is not None and args.threads_per_job < 1:
        raise ValueError(f"--threads_per_job must be at least 1, got {args.threads_per_job}")
    if not 0.0 < args.holdout_fraction < 1.0:
        raise ValueError(f"--holdout_fraction must be in (0, 1), got {args.holdout_fraction}")
    uda = args.uda_holdout_fraction
    if uda is not None and not 0.0 <= uda < 1.0:
        raise ValueError(f"--uda_holdout_fraction must be in [0, 1), got {uda}")
    if args.task == "domain_adaptation" and not uda:
        raise ValueError("--task domain_adaptation needs --uda_holdout_fraction above 0 (e.g. 0.2): the part of each "
                         "test domain given unlabeled to the algorithm")
    if not _MODULE_NAME.fullmatch(args.train_module):
        raise ValueError(f"--train_module must be a dotted module name like {DEFAULT_TRAIN_MODULE}, got {args.train_module!r}")
    get_launcher(args.command_launcher)
    _check_names("dataset", args.datasets, datasets.dataset_names(), is_folder=True)
    check_per_dataset(args.per_dataset or {})
    _check_names("algorithm", args.algorithms, algorithms.algorithm_names())
