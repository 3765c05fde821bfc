"""Run a DomainBed-style sweep: ``launch``, ``delete_incomplete`` or ``status``.

    python -m domainbed.scripts.sweep launch --datasets PACS --algorithms ERM ERM_FTLP \\
        --data_dir DATA --output_dir SWEEP --command_launcher local
    python -m domainbed.scripts.sweep status --sweep ftlp_paper --data_dir DATA --output_dir SWEEP

Jobs are datasets x algorithms x test-env sets x hparams seeds ``[n_hparams_from,
n_hparams)`` x trials. The test-env sets are every single env and, unless
``--single_test_envs``, every pair (leave-one-domain-out selection needs the pairs).
``--test_envs_subset`` keeps the singles of the listed envs and the pairs that contain at
least one of them, so leave-one-domain-out still works for the envs kept. Each job has
``trial_seed = trial`` and ``seed = seed_hash(dataset, algorithm, test_envs, hparams_seed,
trial)``. With ``--paired_seeds`` the seed leaves the algorithm out, ``seed_hash(dataset,
test_envs, hparams_seed, trial)``, so the jobs of different algorithms in one trial share
data order, augmentation and the random init of the parts they have in common: differences
between algorithms are then paired comparisons. The default keeps DomainBed's seeds, so
existing sweeps keep their job folders.

Job folder: ``OUTPUT_DIR/<md5 hex of json.dumps(train_args, sort_keys=True)>`` where the
hash leaves out ``output_dir`` (it is derived from the hash) and ``device`` (where a run
executes is not what it is). The hash keeps ``data_dir`` as DomainBed does: launch,
status and delete_incomplete must be given the same ``--data_dir`` string. A job is
*Done* when its folder holds ``done``, *Incomplete* when the folder exists without it,
and *Not launched* otherwise. ``launch`` starts only Not launched jobs, so rerunning it is
safe; ``delete_incomplete`` removes Incomplete folders so the next launch retries them.

``--sweep FILE`` (a path, or a name under ``sweeps/``) is a JSON object whose keys are
this script's flag names (``datasets``, ``n_hparams``...) plus ``description``. Flags
given on the command line win over the file; ``--hparams`` is merged key by key over the
file's ``hparams``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
from collections import Counter
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from domainbed.command_launchers import Job, LauncherOptions, get_launcher, launcher_names, lock_status
from domainbed.lib.misc import seed_hash

SWEEPS_DIR = Path(__file__).resolve().parents[2] / "sweeps"
DEFAULT_TRAIN_MODULE = "domainbed.scripts.train"
FILE_ONLY_KEYS = frozenset({"description"})
_NOT_FILE_KEYS = frozenset({"command", "sweep", "help"})
_NOT_HASHED = ("output_dir", "device")
_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class JobState(str, Enum):
    """DomainBed's three job states, read from the job folder."""

    DONE = "Done"
    INCOMPLETE = "Incomplete"
    NOT_LAUNCHED = "Not launched"


def job_state(job: Job) -> JobState:
    """Done if ``done`` exists, Incomplete if only the folder does, else Not launched."""
    if (job.output_dir / "done").exists():
        return JobState.DONE
    if job.output_dir.exists():
        return JobState.INCOMPLETE
    return JobState.NOT_LAUNCHED


# ----------------------------------------------------------------------------- registries


def known_datasets() -> list[str] | None:
    """Registered dataset names, or ``None`` while the dataset registry is not importable."""
    try:
        from domainbed.datasets import dataset_names
    except ImportError:
        return None
    return list(dataset_names() if callable(dataset_names) else dataset_names)


def known_algorithms() -> list[str] | None:
    """Registered algorithm names, or ``None`` while the algorithm registry is not importable."""
    try:
        from domainbed.algorithms import algorithm_names
    except ImportError:
        return None
    return list(algorithm_names() if callable(algorithm_names) else algorithm_names)


def is_folder_dataset(name: str) -> bool:
    """Whether ``name`` is a folder that the generic image-folder dataset can read."""
    try:
        from domainbed.datasets import is_folder_dataset as check
    except ImportError:
        return False
    return bool(check(name))


def dataset_environment_count(name: str) -> int:
    """How many environments (domains) dataset ``name`` has."""
    try:
        from domainbed.datasets import num_environments
    except ImportError as error:
        raise ValueError(f"cannot count the environments of {name!r}: domainbed.datasets is not importable ({error})")
    return int(num_environments(name))


def _check_names(kind: str, given: list[str], known: list[str] | None, extra: Callable[[str], bool]) -> None:
    if known is None:
        return  # registry not available (partial install): the trainer will report bad names
    unknown = [name for name in given if name not in known and not extra(name)]
    if unknown:
        raise ValueError(f"unknown {kind}(s) {', '.join(unknown)}; valid {kind}s: {', '.join(sorted(known))}")


# ----------------------------------------------------------------------------- arguments


def _json_object(text: str) -> dict[str, Any]:
    """argparse type for ``--hparams``: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object like '{{\"lr\": 1e-4}}', got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface; every flag except ``--sweep`` may also come from a sweep file."""
    # No abbreviations: "--s" must not silently mean "--sweep" (or "--steps").
    parser = argparse.ArgumentParser(
        prog="python -m domainbed.scripts.sweep", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("command", choices=sorted(_COMMANDS))
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
    jobs.add_argument("--hparams", type=_json_object, default=None, help="JSON object of fixed hparams")
    jobs.add_argument("--holdout_fraction", type=float, default=0.2)
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
        "--per_dataset", type=_json_object, default=None,
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
    launch.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def resolve_sweep_path(name: str) -> Path:
    """``name`` as a path, else ``sweeps/<name>`` or ``sweeps/<name>.json``."""
    for candidate in (Path(name), SWEEPS_DIR / name, SWEEPS_DIR / f"{name}.json"):
        if candidate.is_file():
            return candidate
    bundled = ", ".join(sorted(p.stem for p in SWEEPS_DIR.glob("*.json"))) or "none"
    raise ValueError(f"sweep file {name!r} not found here or in {SWEEPS_DIR}; bundled sweeps: {bundled}")


def _coerce_scalar(action: argparse.Action, where: str, value: Any) -> Any:
    if action.type is _json_object:
        if isinstance(value, str):
            try:
                value = _json_object(value)
            except argparse.ArgumentTypeError as error:
                raise ValueError(f"{where} {error}") from None
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a JSON object, got {value!r}")
        return value
    expected = action.type or str
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or isinstance(value, bool):
        raise ValueError(f"{where} must be of type {expected.__name__}, got {value!r}")
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{where} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return value


def load_sweep_file(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Read a sweep file into ``{flag dest: value}``, checking every key and type."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"sweep file {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"sweep file {path} must hold a JSON object of flag names to values")
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in _NOT_FILE_KEYS}
    valid = sorted(set(actions) | FILE_ONLY_KEYS)
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ValueError(f"sweep file {path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in FILE_ONLY_KEYS:
            continue
        action, where = actions[key], f"sweep file {path}: {key!r}"
        if action.nargs == 0:  # a store_true flag
            if not isinstance(value, bool):
                raise ValueError(f"{where} must be true or false, got {value!r}")
            values[key] = value
        elif action.nargs in ("+", "*"):
            if not isinstance(value, list) or not value:
                raise ValueError(f"{where} must be a non-empty list, got {value!r}")
            values[key] = [_coerce_scalar(action, where, v) for v in value]
        else:
            values[key] = _coerce_scalar(action, where, value)
    return values


def _validate(args: argparse.Namespace) -> None:
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
    if not 0.0 < args.holdout_fraction < 1.0:
        raise ValueError(f"--holdout_fraction must be in (0, 1), got {args.holdout_fraction}")
    if not _MODULE_NAME.fullmatch(args.train_module):
        raise ValueError(f"--train_module must be a dotted module name like {DEFAULT_TRAIN_MODULE}, got {args.train_module!r}")
    get_launcher(args.command_launcher)
    _check_names("dataset", args.datasets, known_datasets(), is_folder_dataset)
    _check_per_dataset(args.per_dataset or {})
    _check_names("algorithm", args.algorithms, known_algorithms(), lambda _: False)


PER_DATASET_KEYS = ("steps", "checkpoint_freq")


def _check_per_dataset(per_dataset: dict[str, Any]) -> None:
    """Known dataset names mapping to ``{steps, checkpoint_freq}`` positive integers."""
    _check_names("dataset", list(per_dataset), known_datasets(), is_folder_dataset)
    for name, values in per_dataset.items():
        where = f"--per_dataset {name!r}"
        if not isinstance(values, dict) or not values or set(values) - set(PER_DATASET_KEYS):
            raise ValueError(f"{where} must be an object with keys among {', '.join(PER_DATASET_KEYS)}, got {values!r}")
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}: {key} must be a positive integer, got {value!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse flags over the sweep file's values over the defaults, then validate them."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--sweep")
    sweep_file = pre.parse_known_args(argv)[0].sweep
    file_values = load_sweep_file(resolve_sweep_path(sweep_file), parser) if sweep_file else {}
    file_hparams = file_values.pop("hparams", None) or {}
    parser.set_defaults(**file_values)  # defaults lose to explicit flags: that is the precedence we want
    args = parser.parse_args(argv)
    args.hparams = {**file_hparams, **(args.hparams or {})}
    _validate(args)
    return args


# ----------------------------------------------------------------------------- jobs


def test_env_combinations(n_envs: int, single_test_envs: bool = False, subset: list[int] | None = None) -> list[list[int]]:
    """Test-env sets of a dataset with ``n_envs`` envs: singles, then pairs (see module doc)."""
    if subset:
        bad = sorted({e for e in subset if not 0 <= e < n_envs})
        if bad:
            raise ValueError(f"--test_envs_subset {bad} out of range: this dataset has envs 0..{n_envs - 1}")
    chosen = sorted(set(subset)) if subset else list(range(n_envs))
    combos = [[env] for env in chosen]
    if not single_test_envs:
        combos += [
            [a, b] for a in range(n_envs) for b in range(a + 1, n_envs) if a in chosen or b in chosen
        ]
    return combos


def job_hash(train_args: dict[str, Any]) -> str:
    """md5 hex of the sorted JSON of the train args, without ``output_dir`` and ``device``."""
    hashed = {k: v for k, v in train_args.items() if k not in _NOT_HASHED}
    return hashlib.md5(json.dumps(hashed, sort_keys=True).encode("utf-8")).hexdigest()


def train_command(train_module: str, train_args: dict[str, Any]) -> list[str]:
    """The argument list running ``train_module`` with ``train_args`` (never a shell string)."""
    argv = [sys.executable, "-m", train_module]
    for key, value in train_args.items():
        if value is None or value is False:
            continue
        argv.append(f"--{key}")
        if value is True:
            continue
        if isinstance(value, (list, tuple)):
            argv.extend(str(v) for v in value)
        else:
            argv.append(str(value))
    return argv


def make_job(train_args: dict[str, Any], sweep_dir: Path, train_module: str) -> Job:
    """A :class:`Job` whose folder is ``sweep_dir/<job_hash>``, checked to stay inside ``sweep_dir``."""
    job_dir = sweep_dir / job_hash(train_args)
    if not job_dir.resolve().is_relative_to(sweep_dir.resolve()):
        raise ValueError(f"job folder {job_dir} would escape the sweep folder {sweep_dir}")
    full = {**train_args, "output_dir": str(job_dir)}
    return Job(argv=train_command(train_module, full), output_dir=job_dir, train_args=full)


def job_seed(dataset: str, algorithm: str, test_envs: list[int], hparams_seed: int, trial: int, paired: bool = False) -> int:
    """The ``--seed`` of one job: DomainBed's hash, or without the algorithm when ``paired``."""
    if paired:
        return seed_hash(dataset, test_envs, hparams_seed, trial)
    return seed_hash(dataset, algorithm, test_envs, hparams_seed, trial)


def build_jobs(args: argparse.Namespace) -> list[Job]:
    """Every job of the sweep, trial-major so that partial sweeps cover whole trials first."""
    sweep_dir = Path(os.path.abspath(args.output_dir))
    combos = {
        d: test_env_combinations(dataset_environment_count(d), args.single_test_envs, args.test_envs_subset)
        for d in args.datasets
    }
    jobs: list[Job] = []
    for trial in range(args.n_trials):
        for dataset in args.datasets:
            for algorithm in args.algorithms:
                for test_envs in combos[dataset]:
                    for hparams_seed in range(args.n_hparams_from, args.n_hparams):
                        train_args: dict[str, Any] = {
                            "dataset": dataset,
                            "algorithm": algorithm,
                            "test_envs": test_envs,
                            "holdout_fraction": args.holdout_fraction,
                            "hparams_seed": hparams_seed,
                            "data_dir": args.data_dir,
                            "task": args.task,
                            "trial_seed": trial,
                            "seed": job_seed(dataset, algorithm, test_envs, hparams_seed, trial, args.paired_seeds),
                        }
                        # Optional keys are added only when set, so default sweeps hash like DomainBed's.
                        per_dataset = (args.per_dataset or {}).get(dataset, {})
                        optional = {
                            "steps": per_dataset.get("steps", args.steps),
                            "hparams": json.dumps(args.hparams, sort_keys=True) if args.hparams else None,
                            "checkpoint_freq": per_dataset.get("checkpoint_freq", args.checkpoint_freq),
                            "skip_model_save": args.skip_model_save or None,
                            "device": args.device,
                        }
                        train_args.update({k: v for k, v in optional.items() if v is not None})
                        jobs.append(make_job(train_args, sweep_dir, args.train_module))
    return jobs


# ----------------------------------------------------------------------------- commands

Command = Callable[[argparse.Namespace, list[Job]], int]
_COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    """Decorator registering a sweep sub-command."""

    def decorate(fn: Command) -> Command:
        if name in _COMMANDS:
            raise ValueError(f"sweep command {name!r} is registered twice")
        _COMMANDS[name] = fn
        return fn

    return decorate


def confirm(message: str) -> bool:
    """Print ``message`` and ask y/n on stdin; anything but yes (or end of input) is no."""
    print(message)
    try:
        answer = input("Are you sure? (y/n) ")
    except EOFError:
        answer = ""
    return answer.strip().lower() in ("y", "yes")


def _print_counts(jobs: list[Job]) -> None:
    counts = Counter(job_state(job) for job in jobs)
    print(
        f"{len(jobs)} jobs: {counts[JobState.DONE]} done, {counts[JobState.INCOMPLETE]} incomplete, "
        f"{counts[JobState.NOT_LAUNCHED]} not launched."
    )


def launcher_options(args: argparse.Namespace) -> LauncherOptions:
    """The launcher settings carried by the parsed flags."""
    return LauncherOptions(
        progress=not args.no_progress,
        slurm_partition=args.slurm_partition,
        slurm_time=args.slurm_time,
        slurm_gpus=args.slurm_gpus,
        slurm_cpus=args.slurm_cpus,
        slurm_mem=args.slurm_mem,
        slurm_array_parallelism=args.slurm_array_parallelism,
        slurm_local=args.slurm_local,
        slurm_wait=args.slurm_wait,
        submitit_dir=Path(args.submitit_dir) if args.submitit_dir else None,
    )


@command("launch")
def launch(args: argparse.Namespace, jobs: list[Job]) -> int:
    """Start every Not launched job; exit status 1 when any of them failed."""
    _print_counts(jobs)
    pending = [job for job in jobs if job_state(job) is JobState.NOT_LAUNCHED]
    if not pending:
        print("Nothing to launch (run delete_incomplete first to retry incomplete jobs).")
        return 0
    message = f"About to launch {len(pending)} jobs with the {args.command_launcher!r} launcher."
    if not args.skip_confirmation and not confirm(message):
        print("Nothing launched.")
        return 0
    summary = get_launcher(args.command_launcher)(pending, launcher_options(args))
    print(f"Launch finished: {summary}.")
    return 1 if summary.failed else 0


@command("delete_incomplete")
def delete_incomplete(args: argparse.Namespace, jobs: list[Job]) -> int:
    """Remove the folders of Incomplete jobs, except those running right now on this host."""
    sweep_dir = Path(os.path.abspath(args.output_dir)).resolve()
    incomplete = [job for job in jobs if job_state(job) is JobState.INCOMPLETE]
    running = [job for job in incomplete if lock_status(job.output_dir) == "live"]
    doomed = [job for job in incomplete if job not in running]
    if running:
        print(f"Keeping {len(running)} incomplete jobs that are running on this host now.")
    remote = sum(lock_status(job.output_dir) == "remote" for job in doomed)
    if remote:
        print(f"Warning: {remote} of them hold a lock from another host and may still run there; cancel them first.")
    if not doomed:
        print("No incomplete jobs to delete.")
        return 0
    if not args.skip_confirmation and not confirm(f"About to delete {len(doomed)} incomplete jobs."):
        print("Nothing deleted.")
        return 0
    for job in doomed:
        if not job.output_dir.resolve().is_relative_to(sweep_dir):  # never rmtree outside the sweep
            raise ValueError(f"refusing to delete {job.output_dir}: not inside {sweep_dir}")
        shutil.rmtree(job.output_dir)
    print(f"Deleted {len(doomed)} incomplete jobs.")
    return 0


@command("status")
def status(args: argparse.Namespace, jobs: list[Job]) -> int:
    """Print how many jobs are done, incomplete and not launched, overall and per dataset/algorithm."""
    _print_counts(jobs)
    running = sum(job_state(j) is JobState.INCOMPLETE and lock_status(j.output_dir) == "live" for j in jobs)
    if running:
        print(f"{running} incomplete jobs are running on this host now.")
    table: dict[tuple[str, str], Counter] = {}
    for job in jobs:
        key = (job.train_args["dataset"], job.train_args["algorithm"])
        table.setdefault(key, Counter())[job_state(job)] += 1
    width = max(len(d) for d, _ in table)
    algo_width = max(len(a) for _, a in table)
    print(f"{'dataset':<{width}}  {'algorithm':<{algo_width}}  {'done':>6}  {'incomplete':>10}  {'not launched':>12}")
    for (dataset, algorithm), counts in table.items():
        print(
            f"{dataset:<{width}}  {algorithm:<{algo_width}}  {counts[JobState.DONE]:>6}  "
            f"{counts[JobState.INCOMPLETE]:>10}  {counts[JobState.NOT_LAUNCHED]:>12}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (bad input raises ``SystemExit`` with the reason)."""
    try:
        args = parse_args(argv)
        jobs = build_jobs(args)
    except ValueError as error:
        raise SystemExit(f"sweep: error: {error}") from None
    return _COMMANDS[args.command](args, jobs)


if __name__ == "__main__":
    sys.exit(main())
