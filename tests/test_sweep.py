"""The sweep script: job enumeration, hashing, states, launch/status/delete_incomplete, sweep files.

Most tests run a fake trainer (written into tmp_path, passed with --train_module) so they
do not depend on the real one; the last test runs the real ``domainbed.scripts.train``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import domainbed.algorithms
import domainbed.datasets
from domainbed.lib import resources
from domainbed.lib.environments import check_test_envs
from domainbed.lib.seeding import seed_hash
from domainbed.scripts import sweep
from domainbed.sweep import jobs as sweep_jobs
from domainbed.sweep import sweep_file

from fixtures_sync import DEADLINE_S, JOB_SIDE, Channel

REPO = Path(__file__).resolve().parents[1]

# Stand-in for domainbed.scripts.train: same flags, writes results.jsonl then done. With
# FAKE_TRAIN_STARTED / FAKE_TRAIN_GATE (channels, tests/fixtures_sync.py) it reports its
# start and waits until the test opens the gate.
FAKE_TRAIN = JOB_SIDE + '''
import argparse, json
from pathlib import Path

def main(argv=None):
    p = argparse.ArgumentParser()
    for flag in ("--data_dir", "--dataset", "--algorithm", "--task", "--hparams", "--output_dir", "--device"):
        p.add_argument(flag)
    for flag in ("--hparams_seed", "--trial_seed", "--seed", "--steps", "--checkpoint_freq"):
        p.add_argument(flag, type=int)
    p.add_argument("--holdout_fraction", type=float)
    p.add_argument("--uda_holdout_fraction", type=float)
    p.add_argument("--test_envs", type=int, nargs="+")
    p.add_argument("--skip_model_save", action="store_true")
    p.add_argument("--save_model_every_checkpoint", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(os.environ["FAKE_TRAIN_LOG"], "a") as fh:
        fh.write(args.output_dir + "\\n")
    if os.environ.get("FAKE_TRAIN_STARTED"):
        report(os.environ["FAKE_TRAIN_STARTED"], args.output_dir)
    if os.environ.get("FAKE_TRAIN_GATE"):
        pass_gate(os.environ["FAKE_TRAIN_GATE"])
    hparams = json.loads(args.hparams) if args.hparams else {}
    if hparams.get("fail") or args.algorithm == os.environ.get("FAKE_TRAIN_FAIL_ALGORITHM"):
        sys.exit("fake failure")
    record = {"args": vars(args), "hparams": hparams, "step": args.steps or 0}
    (out / "results.jsonl").write_text(json.dumps(record, sort_keys=True) + "\\n")
    (out / "done").write_text("done")

if __name__ == "__main__":
    main()
'''

# Runs the sweep in a fresh process with the fake registries (stubbed on the real modules).
WRAPPER = '''
import sys
import domainbed.algorithms, domainbed.datasets
from domainbed.scripts import sweep
domainbed.datasets.dataset_names = lambda: ["Fake3"]
domainbed.datasets.num_environments = lambda name: 3
domainbed.algorithms.algorithm_names = lambda: ["ERM", "CORAL"]
sys.exit(sweep.main(sys.argv[1:]))
'''

ENVS = {"Fake3": 3, "Fake4": 4}


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A fake trainer on PYTHONPATH, an invocation log, and registries that know Fake3/Fake4."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "fake_train.py").write_text(FAKE_TRAIN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(mods), str(REPO), os.environ.get("PYTHONPATH")])))
    log = tmp_path / "invocations.log"
    monkeypatch.setenv("FAKE_TRAIN_LOG", str(log))
    monkeypatch.setattr(domainbed.datasets, "dataset_names", lambda: sorted(ENVS))
    monkeypatch.setattr(domainbed.datasets, "num_environments", lambda name: ENVS[name])
    monkeypatch.setattr(domainbed.algorithms, "algorithm_names", lambda: ["CORAL", "ERM"])
    return SimpleNamespace(root=tmp_path, log=log, out=tmp_path / "sweep", data=tmp_path / "data")


def sweep_args(fake: SimpleNamespace, command: str = "launch", *extra: str) -> list[str]:
    """A 4-job sweep: Fake3 x {ERM, CORAL} x test envs {0, 1} x 1 hparams seed x 1 trial."""
    return [
        command, "--datasets", "Fake3", "--algorithms", "ERM", "CORAL", "--n_hparams", "1", "--n_trials", "1",
        "--single_test_envs", "--test_envs_subset", "0", "1", "--data_dir", str(fake.data),
        "--output_dir", str(fake.out), "--train_module", "fake_train", "--no_progress", *extra,
    ]  # fmt: skip


def invocations(fake: SimpleNamespace) -> list[str]:
    return fake.log.read_text().split() if fake.log.exists() else []


def states(fake: SimpleNamespace, *extra: str) -> dict[str, sweep.JobState]:
    jobs = sweep.build_jobs(sweep.parse_args(sweep_args(fake, "status", *extra)))
    return {str(job.output_dir): sweep.job_state(job) for job in jobs}


# ----------------------------------------------------------------------------- enumeration


def test_test_env_combinations_singles_pairs_and_subset() -> None:
    assert sweep_jobs.test_env_combinations(4) == [[0], [1], [2], [3], [0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    assert sweep_jobs.test_env_combinations(4, single_test_envs=True) == [[0], [1], [2], [3]]
    # The pairs kept are those leave-one-domain-out needs for the envs kept.
    assert sweep_jobs.test_env_combinations(4, subset=[2]) == [[2], [0, 2], [1, 2], [2, 3]]
    assert sweep_jobs.test_env_combinations(6, True, [5, 0]) == [[0], [5]]
    with pytest.raises(ValueError, match="out of range"):
        sweep_jobs.test_env_combinations(3, subset=[3])


def test_one_check_of_test_envs_for_sweep_and_train() -> None:
    check_test_envs([0, 2], 3)  # valid: returns quietly
    check_test_envs([2, 0, 1, 1], 3, flag="--test_envs_subset", for_training=False)  # a subset may cover every env
    with pytest.raises(ValueError, match=r"^--test_envs \[3, -1\] out of range: PACS has environments 0\.\.2$"):
        check_test_envs([0, 3, -1], 3, dataset="PACS")
    with pytest.raises(ValueError, match=r"out of range"):
        check_test_envs([True], 3)  # a JSON true is not env 1
    with pytest.raises(ValueError, match=r"--test_envs has duplicates: \[1, 1\]"):
        check_test_envs([1, 1], 3)
    with pytest.raises(ValueError, match="at least one environment must remain for training"):
        check_test_envs([0, 1, 2], 3)
    # The sweep's subset goes through the same check, naming the dataset.
    with pytest.raises(ValueError, match=r"--test_envs_subset \[4\] out of range: Fake4 has environments 0\.\.3"):
        sweep_jobs.test_env_combinations(4, subset=[4], dataset="Fake4")


def test_job_count_seeds_and_commands(fake: SimpleNamespace) -> None:
    base = ["status", "--datasets", "Fake4", "Fake3", "--algorithms", "ERM", "CORAL", "--n_hparams_from", "1",
            "--n_hparams", "3", "--data_dir", "d", "--output_dir", str(fake.out)]  # fmt: skip
    jobs = sweep.build_jobs(sweep.parse_args(base))
    # (4 singles + 6 pairs) + (3 + 3) envs sets, x 2 algorithms x 2 hparams seeds x 3 trials
    assert len(jobs) == (10 + 6) * 2 * 2 * 3
    assert len(sweep.build_jobs(sweep.parse_args(base + ["--single_test_envs"]))) == (4 + 3) * 2 * 2 * 3
    assert len({job.output_dir for job in jobs}) == len(jobs)
    for job in jobs:
        a = job.train_args
        assert a["hparams_seed"] in (1, 2) and a["trial_seed"] in (0, 1, 2)
        assert a["seed"] == seed_hash(a["dataset"], a["algorithm"], a["test_envs"], a["hparams_seed"], a["trial_seed"])
    pair = next(job for job in jobs if job.train_args["test_envs"] == [1, 3])
    assert pair.argv[:3] == [sys.executable, "-m", "domainbed.scripts.train"]
    i = pair.argv.index("--test_envs")
    assert pair.argv[i + 1 : i + 3] == ["1", "3"]
    assert pair.argv[pair.argv.index("--output_dir") + 1] == str(pair.output_dir)
    assert "--steps" not in pair.argv and "--hparams" not in pair.argv  # unset options are not passed


def test_job_hash_is_md5_of_sorted_args_and_ignores_output_dir_and_device(fake: SimpleNamespace) -> None:
    args = ["--hparams", '{"lr": 0.001, "batch_size": 8}', "--steps", "5"]
    jobs_a = sweep.build_jobs(sweep.parse_args(sweep_args(fake, "status", *args)))
    moved = sweep_args(fake, "status", *args, "--device", "cpu")
    moved[moved.index("--output_dir") + 1] = str(fake.root / "elsewhere")
    jobs_b = sweep.build_jobs(sweep.parse_args(moved))
    assert [j.output_dir.name for j in jobs_a] == [j.output_dir.name for j in jobs_b]
    job = jobs_a[0]
    hashed = {k: v for k, v in job.train_args.items() if k != "output_dir"}
    assert hashed["hparams"] == '{"batch_size": 8, "lr": 0.001}'  # canonical JSON: key order never matters
    assert job.output_dir.name == hashlib.md5(json.dumps(hashed, sort_keys=True).encode()).hexdigest()
    assert job.output_dir == Path(os.path.abspath(fake.out)) / job.output_dir.name
    other = sweep.build_jobs(sweep.parse_args(sweep_args(fake, "status", "--steps", "6")))
    assert not {j.output_dir.name for j in other} & {j.output_dir.name for j in jobs_a}


def _independent_seed(*parts: object) -> int:
    # DomainBed's seed_hash written out again: md5 of str(tuple), as an integer, mod 2**31.
    return int(hashlib.md5(str(parts).encode("utf-8")).hexdigest(), 16) % (2**31)


def test_default_sweep_job_folder_is_domainbeds(fake: SimpleNamespace) -> None:
    jobs = sweep.build_jobs(sweep.parse_args(sweep_args(fake, "status")))
    job = next(j for j in jobs if j.train_args["algorithm"] == "CORAL" and j.train_args["test_envs"] == [1])
    expected_args = {
        "dataset": "Fake3", "algorithm": "CORAL", "test_envs": [1], "holdout_fraction": 0.2, "hparams_seed": 0,
        "data_dir": str(fake.data), "task": "domain_generalization", "trial_seed": 0,
        "seed": _independent_seed("Fake3", "CORAL", [1], 0, 0),
    }  # fmt: skip
    expected_dir = hashlib.md5(json.dumps(expected_args, sort_keys=True).encode("utf-8")).hexdigest()
    assert job.output_dir.name == expected_dir


def test_paired_seeds_ignore_the_algorithm_only(fake: SimpleNamespace) -> None:
    extra = ("--n_hparams", "2", "--n_trials", "2", "--paired_seeds")
    jobs = sweep.build_jobs(sweep.parse_args(sweep_args(fake, "status", *extra)))
    assert len(jobs) == 2 * 2 * 2 * 2  # algorithms x test envs x hparams seeds x trials
    by_key: dict[tuple, set[int]] = {}
    for job in jobs:
        a = job.train_args
        assert "paired_seeds" not in a  # the trainer never sees the option, only its seed
        assert a["seed"] == _independent_seed("Fake3", a["test_envs"], a["hparams_seed"], a["trial_seed"])
        by_key.setdefault((tuple(a["test_envs"]), a["hparams_seed"], a["trial_seed"]), set()).add(a["seed"])
    # One seed shared by ERM and CORAL for each (test envs, hparams seed, trial) ...
    assert all(len(seeds) == 1 for seeds in by_key.values())
    # ... and a different one for every other trial, hparams seed or test-env set.
    assert len({next(iter(seeds)) for seeds in by_key.values()}) == len(by_key) == 8
    # The algorithm stays in the job folder's hash, so paired jobs still get one folder each.
    assert len({job.output_dir for job in jobs}) == len(jobs)
    default = sweep.build_jobs(sweep.parse_args(sweep_args(fake, "status", *extra[:-1])))
    erm_seeds = {j.train_args["seed"] for j in default if j.train_args["algorithm"] == "ERM"}
    coral_seeds = {j.train_args["seed"] for j in default if j.train_args["algorithm"] == "CORAL"}
    assert not erm_seeds & coral_seeds  # DomainBed's default: every algorithm has its own seeds


def test_paired_seeds_from_a_sweep_file(fake: SimpleNamespace) -> None:
    path = write_sweep(fake, {"datasets": ["Fake3"], "algorithms": ["ERM", "CORAL"], "n_hparams": 1, "n_trials": 1,
                              "single_test_envs": True, "paired_seeds": True, "output_dir": str(fake.out)})  # fmt: skip
    args = sweep.parse_args(["status", "--sweep", path])
    assert args.paired_seeds
    jobs = sweep.build_jobs(args)
    for env in range(3):
        seeds = {j.train_args["seed"] for j in jobs if j.train_args["test_envs"] == [env]}
        assert seeds == {_independent_seed("Fake3", [env], 0, 0)}
    with pytest.raises(SystemExit, match="'paired_seeds' must be true or false"):
        sweep.main(["status", "--sweep", write_sweep(fake, {"paired_seeds": "yes"})])


def test_paired_jobs_of_erm_and_erm_ftlp_start_identically(tmp_path: Path) -> None:
    """With one paired seed, ERM and ERM_FTLP get the same classifier and featurizer init,
    the same batches and the same torch RNG stream (the prior must not consume randomness)."""
    import torch

    from domainbed.scripts import train
    from domainbed.training.preemption import PreemptionGuard

    argv = ["status", "--datasets", "Debug28", "--algorithms", "ERM", "ERM_FTLP", "--n_hparams", "1",
            "--n_trials", "1", "--single_test_envs", "--test_envs_subset", "0", "--paired_seeds",
            "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "sweep"), "--device", "cpu"]  # fmt: skip
    starts = []
    for job in sweep.build_jobs(sweep.parse_args(argv)):
        args = train.build_parser().parse_args(job.argv[3:])
        trainer = train.Trainer(args, job.output_dir, PreemptionGuard())
        trainer.setup()
        trainer._loaders(0)
        alg = trainer.algorithm
        init = {f"{part}.{k}": v.clone() for part in ("featurizer", "classifier")
                for k, v in getattr(alg, part).state_dict().items()}  # fmt: skip
        batches = [next(iter(loader)) for loader in trainer.train_loaders]
        rng_after_setup = torch.get_rng_state()
        alg.update(batches)
        starts.append((args.seed, type(alg).__name__, init, batches, rng_after_setup, torch.get_rng_state()))
    (seed_a, name_a, init_a, batches_a, rng_a, step_a), (seed_b, name_b, init_b, batches_b, rng_b, step_b) = starts
    assert (name_a, name_b) == ("ERM", "ERM_FTLP") and seed_a == seed_b
    assert init_a.keys() == init_b.keys() and all(torch.equal(init_a[k], init_b[k]) for k in init_a)
    for (xa, ya), (xb, yb) in zip(batches_a, batches_b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(rng_a, rng_b) and torch.equal(step_a, step_b)


def test_job_folders_cannot_escape_the_sweep(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sweep_jobs, "job_hash", lambda args: "../../outside")
    with pytest.raises(ValueError, match="escape"):
        sweep_jobs.make_job({"dataset": "x"}, tmp_path / "sweep", "fake_train")


# ----------------------------------------------------------------------------- launch / status / delete


def test_launch_runs_every_job_once_and_relaunch_starts_nothing(fake: SimpleNamespace, capsys) -> None:
    assert sweep.main(sweep_args(fake, "launch", "--skip_confirmation")) == 0
    assert set(states(fake).values()) == {sweep.JobState.DONE}
    assert sorted(invocations(fake)) == sorted(states(fake))
    record = json.loads((Path(invocations(fake)[0]) / "results.jsonl").read_text())
    assert record["args"]["output_dir"] == invocations(fake)[0]
    capsys.readouterr()
    assert sweep.main(sweep_args(fake, "launch", "--skip_confirmation")) == 0
    assert len(invocations(fake)) == 4  # nothing started again
    assert "Nothing to launch" in capsys.readouterr().out


def test_failing_job_stays_incomplete_and_delete_incomplete_removes_only_those(
    fake: SimpleNamespace, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("FAKE_TRAIN_FAIL_ALGORITHM", "CORAL")
    assert sweep.main(sweep_args(fake, "launch", "--skip_confirmation")) == 1  # failures give exit status 1
    assert len(invocations(fake)) == 4  # the CORAL failures did not stop the ERM jobs
    capsys.readouterr()
    assert sweep.main(sweep_args(fake, "status")) == 0
    out = capsys.readouterr().out
    assert "4 jobs: 2 done, 2 incomplete (2 failed), 0 not launched." in out
    # columns: done, running, interrupted, failed, not launched
    assert any(line.split() == ["Fake3", "CORAL", "0", "0", "0", "2", "0"] for line in out.splitlines())
    assert any(line.split() == ["Fake3", "ERM", "2", "0", "0", "0", "0"] for line in out.splitlines())

    done_before = {d for d, s in states(fake).items() if s is sweep.JobState.DONE}
    mtimes = {d: (Path(d) / "done").stat().st_mtime_ns for d in done_before}
    assert sweep.main(sweep_args(fake, "delete_incomplete", "--skip_confirmation")) == 0
    after = states(fake)
    assert {d for d, s in after.items() if s is sweep.JobState.DONE} == done_before
    assert sum(s is sweep.JobState.NOT_LAUNCHED for s in after.values()) == 2
    assert {d: (Path(d) / "done").stat().st_mtime_ns for d in done_before} == mtimes

    monkeypatch.delenv("FAKE_TRAIN_FAIL_ALGORITHM")
    assert sweep.main(sweep_args(fake, "launch", "--skip_confirmation")) == 0
    assert len(invocations(fake)) == 6  # only the two deleted jobs ran again
    assert set(states(fake).values()) == {sweep.JobState.DONE}


@pytest.mark.parametrize("command", ["launch", "delete_incomplete"])
def test_answering_no_changes_nothing(fake: SimpleNamespace, monkeypatch, command: str) -> None:
    if command == "delete_incomplete":
        monkeypatch.setenv("FAKE_TRAIN_FAIL_ALGORITHM", "CORAL")
        sweep.main(sweep_args(fake, "launch", "--skip_confirmation"))
    before = states(fake)
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    assert sweep.main(sweep_args(fake, command)) == 0
    assert states(fake) == before
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # end of input is a no too
    assert sweep.main(sweep_args(fake, command)) == 0
    assert states(fake) == before


def test_answering_yes_launches(fake: SimpleNamespace, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    assert sweep.main(sweep_args(fake)) == 0
    assert "About to launch 4 jobs" in capsys.readouterr().out
    assert len(invocations(fake)) == 4


def test_dummy_launcher_prints_commands(fake: SimpleNamespace, capsys) -> None:
    assert sweep.main(sweep_args(fake, "launch", "--command_launcher", "dummy", "--skip_confirmation")) == 0
    out = capsys.readouterr().out
    assert out.count("Dummy launcher: ") == 4 and "-m fake_train" in out
    assert not invocations(fake) and not fake.out.exists()


@pytest.mark.slow
def test_two_concurrent_launch_processes_run_each_job_once(fake: SimpleNamespace, monkeypatch) -> None:
    (fake.root / "wrapper.py").write_text(WRAPPER)
    started, gate = Channel(fake.root / "started"), Channel(fake.root / "gate")
    monkeypatch.setenv("FAKE_TRAIN_STARTED", str(started.path))
    monkeypatch.setenv("FAKE_TRAIN_GATE", str(gate.path))
    procs = [
        subprocess.Popen(
            [sys.executable, str(fake.root / "wrapper.py"), *sweep_args(fake, "launch", "--skip_confirmation")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for _ in range(2)
    ]  # fmt: skip
    try:
        # Each launch runs one job at a time, and every job waits at the gate: two jobs
        # started means both processes are inside a job at once, so they compete for claims.
        first = started.wait_lines(2, "both launch processes to start a job")
        assert len(set(first)) == 2, first
        gate.open()
        outputs = [p.communicate(timeout=DEADLINE_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        started.close()
        gate.close()
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sorted(invocations(fake)) == sorted(states(fake))  # every job exactly once
    assert set(states(fake).values()) == {sweep.JobState.DONE}


def test_slurm_launcher_through_local_executor_finishes_a_two_job_sweep(fake: SimpleNamespace) -> None:
    args = sweep_args(fake, "launch", "--skip_confirmation", "--algorithms", "ERM", "--command_launcher", "slurm",
                      "--slurm_local", "--slurm_time", "2")  # fmt: skip
    assert sweep.main(args) == 0
    assert list(states(fake, "--algorithms", "ERM").values()) == [sweep.JobState.DONE] * 2
    assert len(invocations(fake)) == 2
    assert (fake.out / ".submitit").is_dir()


# ----------------------------------------------------------------------------- flags and sweep files


def write_sweep(fake: SimpleNamespace, content: dict) -> str:
    path = fake.root / "my_sweep.json"
    path.write_text(json.dumps(content))
    return str(path)


def test_sweep_file_fills_flags_and_the_command_line_wins(fake: SimpleNamespace) -> None:
    path = write_sweep(fake, {
        "description": "test", "datasets": ["Fake4"], "algorithms": ["ERM"], "n_hparams": 2, "n_trials": 2,
        "single_test_envs": True, "test_envs_subset": [1], "steps": 7, "holdout_fraction": 0.3,
        "hparams": {"lr": 0.1, "batch_size": 4}, "data_dir": str(fake.data), "output_dir": str(fake.out),
    })  # fmt: skip
    args = sweep.parse_args(["status", "--sweep", path])
    assert (args.datasets, args.n_hparams, args.n_trials, args.steps) == (["Fake4"], 2, 2, 7)
    assert args.single_test_envs and args.test_envs_subset == [1] and args.holdout_fraction == 0.3
    assert len(sweep.build_jobs(args)) == 1 * 2 * 2
    args = sweep.parse_args(["status", "--sweep", path, "--n_trials", "1", "--steps", "9", "--hparams", '{"lr": 0.5}'])
    assert (args.n_trials, args.steps, args.n_hparams) == (1, 9, 2)
    assert args.hparams == {"lr": 0.5, "batch_size": 4}  # merged key by key, the command line wins


def test_bad_sweep_files_and_flags_are_reported(fake: SimpleNamespace) -> None:
    path = write_sweep(fake, {"datasets": ["Fake3"], "n_hparam": 3})
    with pytest.raises(SystemExit, match=r"unknown key\(s\) n_hparam; valid keys: .*n_hparams"):
        sweep.main(["status", "--sweep", path])
    path = write_sweep(fake, {"n_trials": "3"})
    with pytest.raises(SystemExit, match="'n_trials' must be of type int"):
        sweep.main(["status", "--sweep", path])
    path = write_sweep(fake, {"task": "domain_confusion"})
    with pytest.raises(SystemExit, match="must be one of domain_generalization, domain_adaptation"):
        sweep.main(["status", "--sweep", path])
    with pytest.raises(SystemExit, match=r"not found.*bundled sweeps: .*ftlp_paper"):
        sweep.main(["status", "--sweep", "no_such_sweep"])
    with pytest.raises(SystemExit, match="unknown command launcher 'nope'; valid launchers: dummy, local"):
        sweep.main(sweep_args(fake, "launch", "--command_launcher", "nope"))
    with pytest.raises(SystemExit, match="unknown dataset.*Nope; valid datasets: Fake3, Fake4"):
        sweep.main(sweep_args(fake, "status", "--datasets", "Nope"))
    with pytest.raises(SystemExit, match="unknown algorithm.*MAGIC; valid algorithms: CORAL, ERM"):
        sweep.main(sweep_args(fake, "status", "--algorithms", "MAGIC"))
    with pytest.raises(SystemExit, match="--output_dir is required"):
        sweep.main(["status", "--datasets", "Fake3", "--algorithms", "ERM"])
    with pytest.raises(SystemExit, match="range"):
        sweep.main(sweep_args(fake, "status", "--n_hparams_from", "3", "--n_hparams", "3"))


@pytest.mark.parametrize("name", ["ftlp_paper", "offline_demo"])
def test_bundled_sweep_files_load(name: str) -> None:
    values = sweep_file.load_sweep_file(sweep_file.resolve_sweep_path(name), sweep.build_parser())
    assert values["datasets"] and values["algorithms"] and isinstance(values["hparams"], dict)


def test_sweep_file_values_are_parsed_by_the_flags_themselves(fake: SimpleNamespace) -> None:
    base = {"datasets": ["Fake3"], "algorithms": ["ERM"], "output_dir": str(fake.out)}
    # JSON ints are floats where a float is wanted; hparams may also be the text of a JSON object.
    path = write_sweep(fake, {**base, "slurm_mem": 4, "hparams": '{"lr": 0.5}', "test_envs_subset": [2, 0]})
    args = sweep.parse_args(["status", "--sweep", path])
    assert args.slurm_mem == 4.0 and isinstance(args.slurm_mem, float)
    assert args.hparams == {"lr": 0.5} and args.test_envs_subset == [2, 0]
    # Strings that start like a flag stay values: tokens are JSON, never read as options.
    assert sweep.parse_args(["status", "--sweep", write_sweep(fake, {**base, "device": "-1"})]).device == "-1"
    bad = [
        ({"datasets": "Fake3"}, "'datasets' must be a list, got 'Fake3'"),
        ({"datasets": []}, "'datasets' expected at least one argument"),
        ({"n_trials": [1]}, "'n_trials' must be a single value, not a list"),
        ({"n_trials": 2.0}, "'n_trials' must be of type int, got 2.0"),
        ({"n_trials": True}, "'n_trials' must be of type int, got True"),
        ({"test_envs_subset": [0, "1"]}, "'test_envs_subset' must be of type int, got '1'"),
        ({"data_dir": 5}, "'data_dir' must be of type str, got 5"),
        ({"hparams": [1]}, "'hparams' must be a single value"),
        ({"hparams": 5}, "'hparams' must be a JSON object"),
        ({"sweep": "other"}, r"unknown key\(s\) sweep"),
        ({"comparisons": ["ERM_FTLP", "ERM"]}, r"'comparisons' must be a list of \[treatment, baseline\] name pairs"),
        ({"algorithms": ["ERM"], "comparisons": [["CORAL", "ERM"]]}, "'comparisons' names CORAL, which the sweep does not run"),
    ]
    for content, message in bad:
        path = write_sweep(fake, {**base, **content})
        with pytest.raises(SystemExit, match=f"sweep file {path}: {message}"):
            sweep.main(["status", "--sweep", path])


def test_sweep_file_declares_the_comparisons_its_report_shows(fake: SimpleNamespace) -> None:
    base = {"datasets": ["Fake3"], "algorithms": ["ERM", "CORAL"], "output_dir": str(fake.out)}
    plain = [job.output_dir for job in sweep.build_jobs(sweep.parse_args(["status", "--sweep", write_sweep(fake, base)]))]
    assert sweep_file.sweep_comparisons(fake.root / "my_sweep.json") == []  # none declared
    path = write_sweep(fake, {**base, "comparisons": [["CORAL", "ERM"], ["ERM", "CORAL"]]})
    assert sweep_file.sweep_comparisons(path) == [("CORAL", "ERM"), ("ERM", "CORAL")]  # in the file's order
    args = sweep.parse_args(["status", "--sweep", path])  # a file-only key: the jobs do not see it
    assert not hasattr(args, "comparisons") and [job.output_dir for job in sweep.build_jobs(args)] == plain


def test_packaged_sweeps_resolve_by_name_from_any_folder(fake: SimpleNamespace, monkeypatch) -> None:
    monkeypatch.chdir(fake.root)  # no sweeps/ folder here: the packaged copy is found
    expected = resources.path("sweeps/offline_demo.json")
    for name in ("offline_demo", "offline_demo.json", "sweeps/offline_demo.json"):
        assert sweep_file.resolve_sweep_path(name) == expected
    (fake.root / "offline_demo").write_text("{}")
    assert sweep_file.resolve_sweep_path("offline_demo") == Path("offline_demo")  # a path comes first
    with pytest.raises(ValueError, match=r"'\.\./setup\.py' not found .*bundled sweeps: ftlp_paper"):
        sweep_file.resolve_sweep_path("../setup.py")


def test_offline_demo_sweep_is_small(fake: SimpleNamespace, monkeypatch) -> None:
    monkeypatch.setattr(domainbed.datasets, "dataset_names", lambda: ["RotatedMNISTSubset"])
    monkeypatch.setattr(domainbed.datasets, "num_environments", lambda name: 6)
    monkeypatch.setattr(domainbed.algorithms, "algorithm_names", lambda: ["ERM", "ERM_FTLP"])
    args = sweep.parse_args(["status", "--sweep", "offline_demo", "--data_dir", "d", "--output_dir", str(fake.out)])
    jobs = sweep.build_jobs(args)
    assert len(jobs) == 2 * 1 * 1 * 3  # algorithms x test env {5} x hparams seed 0 x trials
    assert {tuple(j.train_args["test_envs"]) for j in jobs} == {(5,)}
    assert all(j.train_args["hparams_seed"] == 0 and j.train_args["steps"] == 300 for j in jobs)


# ----------------------------------------------------------------------------- the real trainer


@pytest.mark.slow
def test_sweep_with_the_real_trainer_on_debug28(tmp_path: Path, monkeypatch) -> None:
    """End to end: ERM and CORAL x 2 hparams seeds x 1 trial on Debug28, test env 0."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    out = tmp_path / "sweep"
    argv = ["--datasets", "Debug28", "--algorithms", "ERM", "CORAL", "--n_hparams", "2", "--n_trials", "1",
            "--single_test_envs", "--test_envs_subset", "0", "--steps", "3", "--checkpoint_freq", "2",
            "--data_dir", str(tmp_path / "data"), "--output_dir", str(out), "--device", "cpu",
            "--skip_confirmation", "--no_progress"]  # fmt: skip
    assert sweep.main(["launch", *argv]) == 0
    jobs = sweep.build_jobs(sweep.parse_args(["status", *argv]))
    assert len(jobs) == 4
    for job in jobs:
        assert sweep.job_state(job) is sweep.JobState.DONE, (job.output_dir / "launcher.log").read_text()
        records = [json.loads(line) for line in (job.output_dir / "results.jsonl").read_text().splitlines()]
        assert records[-1]["step"] in (2, 3)  # the last checkpoint of a 3-step run
        assert records[-1]["args"]["algorithm"] == job.train_args["algorithm"]
        assert records[-1]["args"]["test_envs"] == [0]


def test_demo_prints_per_domain_accuracy_of_each_run(tmp_path: Path) -> None:
    from domainbed.scripts import demo

    job = tmp_path / "job"
    job.mkdir()
    record = {"step": 9, "env0_in_acc": 0.5, "env1_in_acc": 0.25, "env2_in_acc": 0.75,
              "args": {"dataset": "Debug28", "algorithm": "ERM", "test_envs": [1], "hparams_seed": 0,
                       "trial_seed": 0, "seed": 0}, "hparams": {}}
    (job / "results.jsonl").write_text(json.dumps(record) + "\n")
    (job / "done").write_text("done\n")
    text = demo.per_domain_accuracy(str(tmp_path))
    assert "ERM" in text and " 50.0 " in text and " 25.0*" in text and " 75.0 " in text
