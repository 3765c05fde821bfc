"""Interruptions as a cluster or a user produces them (issue 26): SIGTERM and SIGINT to the
trainer, to its whole process group with data-loader workers, or to a sweep's launcher;
a relaunched sweep resumes what was interrupted; thread and worker counts on a shared node.

The process tests run real processes: a ``train`` with real loader workers on an image
folder, and ``sweep launch`` with the real trainer. A run is frozen at an exact step by the
``DOMAINBED_FAULT`` hook (it stops itself with SIGSTOP), signalled, then continued, so no
test depends on how fast this machine is.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from domainbed.launchers import claims, local
from domainbed.launchers.interrupts import LaunchInterrupts
from domainbed.training import loaders, run_lock
from domainbed.training.atomic_files import read_jsonl
from domainbed.training.faults import FAULT_ENV, STOP_NOTICE
from domainbed.training.preemption import Preempted, PreemptionGuard
from domainbed.training.run_lock import LOCK_FILE

from fixtures_datasets import png_bytes, write_files

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 300  # far beyond any run here; reaching it fails the test, loudly
VOLATILE = {"step_time", "mem_gb", "args"}
slow = pytest.mark.slow
IMAGE_HPARAMS = json.dumps({"backbone": "resnet18", "pretrained": False, "image_size": 32, "batch_size": 4})


def comparable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


def differences(a: list[dict], b: list[dict]) -> list[dict]:
    """Per record, the keys whose values differ (for a readable failure)."""
    return [{k: (x.get(k), y.get(k)) for k in set(x) | set(y) if x.get(k) != y.get(k)} for x, y in zip(a, b)]


def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def is_stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


def pending_signals(pid: int) -> int:
    """The process-wide pending signal mask (``ShdPnd`` in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("ShdPnd:"):
            return int(line.split()[1], 16)
    return 0


def has_pending(pid: int, signum: int) -> bool:
    return bool(pending_signals(pid) & (1 << (signum - 1)))


def saved_step(name: str, text: str) -> int:
    """The step of "<SIGNAL> received: checkpoint saved at step N". The signal may be handed
    to one of torch's threads; the main thread then sees the flag a moment later, at the
    latest in the next step."""
    match = re.search(rf"{name} received: checkpoint saved at step (\d+);", text)
    assert match, text[-3000:]
    return int(match.group(1))


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# ----------------------------------------------------------------------------- units


def test_workers_ignore_sigterm_and_sigint_and_keep_serving_batches():
    data = TensorDataset(torch.arange(40, dtype=torch.float32).view(40, 1), torch.zeros(40, dtype=torch.long))
    loader = loaders.train_loader(data, 4, seed=0, start_step=0, num_workers=2, pin_memory=False)
    it = iter(loader)
    pids = [w.pid for w in it._workers]
    assert len(pids) == 2
    for pid in pids:  # at once, while the workers may still be starting: then the signals wait, blocked
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
    first = next(it)
    for pid in pids:  # and once they serve batches
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
    time.sleep(0.5)
    assert all(w.is_alive() for w in it._workers), "a worker died of a signal the main process owns"
    for _ in range(10):
        batch = next(it)
    assert batch[0].shape == first[0].shape
    del it


def test_a_second_ctrl_c_stops_at_once_and_sigterm_never_escalates():
    guard = PreemptionGuard()
    guard.enter("training")
    guard._handle(signal.SIGINT, None)
    assert guard.requested and not guard.immediate and guard.exit_code == 130
    with pytest.raises(Preempted):
        guard._handle(signal.SIGINT, None)
    assert guard.immediate and "stopped at once" in guard.notice()

    term = PreemptionGuard()
    term.enter("training")
    for _ in range(3):  # a scheduler and a launcher may both send it
        term._handle(signal.SIGTERM, None)
    assert term.requested and not term.immediate and term.exit_code == 143
    term._handle(signal.SIGINT, None)  # the user's first Ctrl-C after a SIGTERM: still an orderly stop
    assert not term.immediate and term.exit_code == 143


def test_a_signal_in_set_up_raises_at_once_with_its_own_status():
    guard = PreemptionGuard()
    with pytest.raises(Preempted):
        guard._handle(signal.SIGINT, None)
    assert guard.exit_code == 130 and guard.notice().startswith("SIGINT received during set-up")


@pytest.mark.parametrize(
    ("cores", "load", "jobs", "override", "env", "expected"),
    [
        (2, 0.0, 1, None, None, 2),  # a quiet 2-core machine, one job: both cores
        (2, 1.3, 1, None, None, 1),  # another process busy: one thread, no collapse
        (16, 3.6, 2, None, None, 6),  # (16 - 4) free cores / 2 jobs at once
        (2, 5.0, 1, None, None, 1),  # overloaded: still one thread
        (8, 0.0, 1, 3, None, 3),  # --threads_per_job wins
        (8, 0.0, 1, None, "2", 2),  # then OMP_NUM_THREADS from the environment
    ],
)
def test_threads_per_job_leave_busy_cores_alone(monkeypatch, cores, load, jobs, override, env, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    assert local.threads_per_job(jobs, override) == expected


def test_default_workers_are_capped_by_the_cores_and_the_loader_does_not_warn(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert loaders.default_workers(4) == 2 and loaders.default_workers(0) == 0 and loaders.default_workers(1) == 1
    monkeypatch.undo()
    workers = loaders.default_workers(4)  # an image dataset's default, on whatever machine runs this
    data = TensorDataset(torch.zeros(16, 1), torch.zeros(16, dtype=torch.long))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        it = iter(loaders.eval_loader(data, 4, workers, False))
        next(it)
        del it
    assert not [w for w in caught if "worker" in str(w.message)], [str(w.message) for w in caught]


def test_the_launcher_forwards_each_signal_once_to_the_job_group(tmp_path):
    # A job that counts the SIGINTs it receives, in its own session like every launched job.
    script = tmp_path / "job.py"
    script.write_text(
        "import signal, sys, time\n"
        "n = []\n"
        "signal.signal(signal.SIGINT, lambda s, f: n.append(s))\n"
        "print('ready', flush=True)\n"
        "while len(n) < 2: time.sleep(0.01)\n"
        "time.sleep(0.3)\n"
        "sys.exit(100 + len(n))\n"
    )
    log = tmp_path / "log"
    interrupts = LaunchInterrupts()
    with interrupts, open(log, "wb") as out:
        import threading

        def ctrl_c_twice() -> None:
            wait_for(lambda: log.exists() and b"ready" in log.read_bytes(), "the job to start")
            os.kill(os.getpid(), signal.SIGINT)  # as a terminal would: the launcher's group, not the job's
            time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=ctrl_c_twice, daemon=True).start()
        code = interrupts.run([sys.executable, str(script)], out, os.environ)
    assert code == 102, "each Ctrl-C reaches the job exactly once"
    assert interrupts.stopping and interrupts.exit_code == 130


def test_job_conditions_tell_interrupted_from_failed_and_running(tmp_path):
    job = tmp_path / "job"
    assert claims.job_condition(job) == "not launched"
    job.mkdir()
    assert claims.job_condition(job) == "interrupted"  # a folder nobody holds, no error recorded
    run_lock.record_exit(job, 143)
    assert claims.job_condition(job) == "interrupted"
    run_lock.record_exit(job, -9)  # killed (an OOM killer, a node lost)
    assert claims.job_condition(job) == "interrupted"
    run_lock.record_exit(job, 1)
    assert claims.job_condition(job) == "failed"
    run_lock.record_exit(job, 2)
    assert claims.job_condition(job) == "failed"
    claims.refresh_lock(job, "token")  # this live process holds the claim
    assert claims.job_condition(job) == "running"
    claims.release(job, "token")
    (job / "done").write_text("done\n")
    assert claims.job_condition(job) == "done"


def test_a_train_process_holding_the_folder_is_running_and_not_reclaimed(tmp_path):
    from domainbed.launchers.registry import Job
    from domainbed.training.run_lock import folder_lock

    job = tmp_path / "job"
    job.mkdir()
    with folder_lock(job):
        assert claims.job_condition(job) == "running"
        assert claims.reclaim(Job(argv=["x"], output_dir=job)) is None
    token = claims.reclaim(Job(argv=["x"], output_dir=job))
    assert token is not None and claims.read_lock(job)["token"] == token
    assert claims.reclaim(Job(argv=["x"], output_dir=job)) is None  # now ours: a second launch leaves it


def test_a_scheduler_claim_counts_as_remote_after_its_submitter_is_gone(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    claims.refresh_lock(job, "t", scheduler="slurm")
    assert claims.lock_status(job) == "remote" and claims.job_condition(job) == "running"


# ----------------------------------------------------------------------------- real processes


def image_folder(root: Path) -> Path:
    files = {f"{d}/{c}/{i}.png": png_bytes(16, 20 * i + 5 * j) for j, d in enumerate("abc") for c in ("x", "y")
             for i in range(6)}
    return write_files(root, files)


def train_cmd(data: Path | str, out: Path, workers: int, steps: int = 24, freq: int = 10) -> list[str]:
    return [sys.executable, "-m", "domainbed.scripts.train", "--dataset", str(data), "--algorithm", "ERM",
            "--test_envs", "0", "--steps", str(steps), "--checkpoint_freq", str(freq), "--num_workers", str(workers),
            "--hparams", IMAGE_HPARAMS, "--output_dir", str(out)]


def run_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


@slow
@pytest.mark.parametrize(("signum", "workers"), [(signal.SIGTERM, 2), (signal.SIGINT, 2), (signal.SIGINT, 0)])
def test_signal_to_the_whole_process_group_with_workers_saves_and_resumes(tmp_path, signum, workers):
    data = image_folder(tmp_path / "images")
    reference = tmp_path / "reference"  # without workers: the records do not depend on their number
    subprocess.run(train_cmd(data, reference, 0), check=True, env=run_env(), cwd=REPO, timeout=DEADLINE_S,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    out = tmp_path / "run"
    log = tmp_path / "run.log"
    with open(log, "wb") as f:  # a session of its own: the test signals its group as Slurm or kill -- -PGID would
        proc = subprocess.Popen(train_cmd(data, out, workers), env=run_env(**{FAULT_ENV: "step:15:stop"}), cwd=REPO,
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: is_stopped(proc.pid) and STOP_NOTICE in log.read_text(errors="replace"), "the stop at step 14")
        os.killpg(proc.pid, signum)  # the trainer (frozen, so it is pending) and every worker
        time.sleep(0.5)  # workers that did not ignore it would be dead by now
        os.kill(proc.pid, signal.SIGCONT)
        code = proc.wait(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text(errors="replace")
    name = signal.Signals(signum).name
    assert code == 128 + signum, text[-3000:]
    saved = saved_step(name, text)
    assert saved in (14, 15), text[-3000:]  # the step the notice was seen in (see saved_step)
    assert "killed by signal" not in text and "Traceback" not in text
    wait_for(lambda: not group_alive(proc.pid), "the workers to leave with the trainer")
    assert not (out / "done").exists()

    rerun = subprocess.run(train_cmd(data, out, workers), env=run_env(), cwd=REPO, timeout=DEADLINE_S,
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"Resuming from step {saved + 1} " in (out / "out.txt").read_text()
    mine, theirs = comparable(read_jsonl(out / "results.jsonl")), comparable(read_jsonl(reference / "results.jsonl"))
    assert mine == theirs, differences(mine, theirs)


def sweep_cmd(sweep_dir: Path, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "domainbed.scripts.sweep", "launch", "--datasets", "Debug28", "--algorithms", "ERM",
            "--n_hparams", "1", "--n_trials", "1", "--single_test_envs", "--test_envs_subset", "0",
            "--steps", "40", "--checkpoint_freq", "10", "--hparams", '{"batch_size": 4}', "--data_dir", str(data_dir),
            "--output_dir", str(sweep_dir), "--command_launcher", "local", "--skip_confirmation", "--no_progress"]


def job_folder(sweep_dir: Path) -> Path:
    folders = [p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(folders) == 1, folders
    return folders[0]


@slow
@pytest.mark.parametrize(("target", "signum"), [("group", signal.SIGINT), ("launcher", signal.SIGTERM)])
def test_interrupted_sweep_job_resumes_on_relaunch_and_equals_an_uninterrupted_run(tmp_path, target, signum):
    data_dir = tmp_path / "data"
    reference = tmp_path / "reference"
    done = subprocess.run(sweep_cmd(reference, data_dir), env=run_env(), cwd=REPO, timeout=DEADLINE_S,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    sweep_dir = tmp_path / "sweep"
    log = tmp_path / "launch.log"
    with open(log, "wb") as f:  # in a session of its own, like a terminal's foreground job
        launcher = subprocess.Popen(sweep_cmd(sweep_dir, data_dir), env=run_env(**{FAULT_ENV: "step:26:stop"}),
                                    cwd=REPO, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: sweep_dir.exists() and any(
            STOP_NOTICE in (p / claims.LOG_NAME).read_text(errors="replace")
            for p in sweep_dir.iterdir() if (p / claims.LOG_NAME).exists()), "the job to stop at step 25")
        job = job_folder(sweep_dir)
        trainer = json.loads((job / LOCK_FILE).read_text())["pid"]
        wait_for(lambda: is_stopped(trainer), "the trainer to be stopped")
        if target == "group":
            os.killpg(launcher.pid, signum)  # Ctrl-C at a terminal: the launcher's process group
        else:
            os.kill(launcher.pid, signum)  # the launcher alone
        wait_for(lambda: has_pending(trainer, signum), "the launcher to forward the signal")
        os.kill(trainer, signal.SIGCONT)
        code = launcher.wait(timeout=DEADLINE_S)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    name = signal.Signals(signum).name
    text = log.read_text(errors="replace")
    assert code == 128 + signum, text[-3000:]
    assert f"{name} received: the running jobs saved a checkpoint" in text and "Traceback" not in text
    saved = saved_step(name, (job / "err.txt").read_text())
    assert saved in (25, 26)
    assert run_lock.last_exit(job) == 128 + signum and claims.job_condition(job) == "interrupted"

    status = subprocess.run([*sweep_cmd(sweep_dir, data_dir)[:3], "status", *sweep_cmd(sweep_dir, data_dir)[4:]],
                            env=run_env(), cwd=REPO, capture_output=True, text=True, timeout=DEADLINE_S)
    assert "1 jobs: 0 done, 1 incomplete (1 interrupted), 0 not launched." in status.stdout, status.stdout

    relaunch = subprocess.run(sweep_cmd(sweep_dir, data_dir), env=run_env(), cwd=REPO, capture_output=True,
                              text=True, timeout=DEADLINE_S)
    assert relaunch.returncode == 0, relaunch.stdout[-3000:] + relaunch.stderr[-3000:]
    assert "1 of them interrupted, resuming from their checkpoints" in relaunch.stdout
    assert f"Resuming from step {saved + 1} " in (job / "out.txt").read_text()
    assert (job / "done").exists()
    assert comparable(read_jsonl(job / "results.jsonl")) == comparable(read_jsonl(job_folder(reference) / "results.jsonl"))


def test_a_process_with_live_workers_exits_although_they_ignore_sigterm(tmp_path):
    # The iterator is still referenced when the interpreter exits, so multiprocessing's exit
    # handler meets live workers: it ends them with SIGTERM, which they ignore, then waits.
    script = tmp_path / "exit.py"
    script.write_text(
        "import torch\n"
        "from torch.utils.data import TensorDataset\n"
        "from domainbed.training import loaders\n"
        "data = TensorDataset(torch.zeros(16, 1), torch.zeros(16, dtype=torch.long))\n"
        "it = iter(loaders.eval_loader(data, 4, 2, False))\n"
        "next(it)\n"
        "print('served', flush=True)\n"
    )
    done = subprocess.run([sys.executable, str(script)], cwd=REPO, env=run_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "served" in done.stdout, done.stderr[-2000:]
