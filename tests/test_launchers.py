"""Command launchers: registry, claiming, local / multi_gpu / slurm (through submitit locally).

Concurrency is synchronised on events, never on sleeps (tests/fixtures_sync.py): a gated
job reports its start into a channel the test reads, then waits until the test opens the
gate, so the test knows which jobs run at the same time.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from domainbed import launchers as cl
from domainbed.launchers import Job, LauncherOptions, local, slurm

from fixtures_sync import DEADLINE_S, JOB_SIDE, Channel

REPO = Path(__file__).resolve().parents[1]

# A job that logs each start; when given channels, reports its start and waits at the gate
# (so the test decides when it ends); then writes `done` (or exits 3 when told to fail).
JOB_CODE = JOB_SIDE + """
from pathlib import Path
out, log, started, gate, fail = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "fail"
out.mkdir(parents=True, exist_ok=True)
line = f"{out.name} {os.environ.get('CUDA_VISIBLE_DEVICES')}"
with open(log, "a") as fh:
    fh.write(line + "\\n")
print("hello from", out.name)
if started:
    report(started, line)
if gate:
    pass_gate(gate)
if fail:
    print("boom", file=sys.stderr)
    sys.exit(3)
(out / "done").write_text("")
"""

# A trainer stand-in that checkpoints on SIGTERM and resumes from that checkpoint when rerun.
# SIGTERM is blocked before the job reports its worker's pid, then taken with sigtimedwait:
# from the report on, a pre-emption is never missed, and a missing one fails loudly.
PREEMPTIBLE_CODE = JOB_SIDE + """
import signal
from pathlib import Path
out, ready = Path(sys.argv[1]), sys.argv[2]
resumed = (out / "checkpoint").exists()
with open(out / "starts", "a") as fh:
    fh.write("resumed\\n" if resumed else "fresh\\n")
if resumed:
    (out / "done").write_text("")
    sys.exit(0)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
report(ready, str(os.getppid()))
if signal.sigtimedwait({signal.SIGTERM}, 60) is None:
    sys.exit("no SIGTERM within 60 s: the test never pre-empted this job")
(out / "checkpoint").write_text("")
sys.exit(143)
"""


def make_job(
    root: Path, name: str, log: Path, gate: Channel | None = None, fail: bool = False, started: Channel | None = None
) -> Job:
    out = root / name
    channels = [str(c.path) if c else "" for c in (started, gate)]
    argv = [sys.executable, "-c", JOB_CODE, str(out), str(log), *channels, "fail" if fail else "ok"]
    return Job(argv=argv, output_dir=out)


def starts(log: Path) -> list[str]:
    return log.read_text().split("\n")[:-1] if log.exists() else []


def run_in_threads(*targets) -> list[threading.Thread]:
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for t in threads:
        t.start()
    return threads


def join(threads: list[threading.Thread], what: str) -> None:
    """Join every thread; fail loudly at the deadline instead of carrying on without it."""
    for t in threads:
        t.join(DEADLINE_S)
        assert not t.is_alive(), f"{what} did not return within {DEADLINE_S} s"


@pytest.fixture
def channel(tmp_path: Path):
    """Make :class:`Channel` objects in ``tmp_path``; closed when the test ends."""
    made: list[Channel] = []

    def make(name: str) -> Channel:
        made.append(Channel(tmp_path / name))
        return made[-1]

    yield make
    for c in made:
        c.close()


@pytest.fixture
def quiet() -> LauncherOptions:
    return LauncherOptions(progress=False)


@pytest.fixture
def pythonpath(monkeypatch: pytest.MonkeyPatch) -> None:
    """submitit's workers unpickle our callable, so they must import this checkout."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


# ----------------------------------------------------------------------------- synchronisation


def test_channels_pass_events_and_fail_loudly_at_their_deadline(channel) -> None:
    started, gate = channel("started"), channel("gate")
    with pytest.raises(AssertionError, match="timed out after 0.2 s waiting for a line nobody writes"):
        started.wait_lines(1, "a line nobody writes", deadline_s=0.2)
    code = JOB_SIDE + "report(sys.argv[1], 'at the gate'); pass_gate(sys.argv[2], float(sys.argv[3]))"

    def at_gate(deadline_s: float) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-c", code, str(started.path), str(gate.path), str(deadline_s)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=DEADLINE_S)

    shut = at_gate(0.2)  # nobody opens the gate: the process gives up with a message, not silently
    assert shut.returncode == 1 and "did not open the gate" in shut.stderr
    assert started.wait_lines(1, "the first report") == ["at the gate"]
    gate.open(passes=2)
    assert [at_gate(DEADLINE_S).returncode for _ in range(2)] == [0, 0]  # an open gate lets later ones through
    assert started.wait_lines(2, "two more reports") == ["at the gate"] * 2


# ----------------------------------------------------------------------------- registry


def test_registry_lists_builtins_and_rejects_unknown_and_duplicates() -> None:
    assert {"dummy", "local", "multi_gpu", "slurm"} <= set(cl.launcher_names())
    assert cl.get_launcher("local") is local.local_launcher
    with pytest.raises(ValueError, match=r"unknown command launcher 'nope'.*dummy, local, multi_gpu, slurm"):
        cl.get_launcher("nope")
    with pytest.raises(ValueError, match="registered twice"):
        cl.register_launcher("local")(local.dummy_launcher)


def test_old_module_name_reexports_the_launchers() -> None:
    from domainbed import command_launchers

    assert command_launchers.get_launcher is cl.get_launcher and command_launchers.Job is Job
    assert command_launchers.SubmititTrainJob is slurm.SubmititTrainJob


def test_dummy_prints_commands_and_runs_nothing(tmp_path: Path, quiet: LauncherOptions, capsys) -> None:
    log = tmp_path / "log"
    jobs = [make_job(tmp_path / "sweep", f"job{i}", log) for i in range(2)]
    summary = cl.get_launcher("dummy")(jobs, quiet)
    printed = capsys.readouterr().out
    assert all(shlex.join(job.argv) in printed for job in jobs)
    assert summary.started == 0 and not log.exists() and not (tmp_path / "sweep").exists()


# ----------------------------------------------------------------------------- claiming


def test_claim_is_exclusive_and_release_clears_the_lock(tmp_path: Path) -> None:
    job = make_job(tmp_path, "job", tmp_path / "log")
    token = cl.claim(job)
    assert token is not None
    owner = cl.read_lock(job.output_dir)
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname() and owner["token"] == token
    assert cl.lock_status(job.output_dir) == "live"
    assert cl.claim(job) is None  # the folder exists: not ours to run
    cl.release(job.output_dir, "someone-else")
    assert cl.lock_status(job.output_dir) == "live"  # only the owner releases
    cl.release(job.output_dir, token)
    assert cl.lock_status(job.output_dir) == "none" and job.output_dir.is_dir()
    assert not list(tmp_path.glob(".claim-*"))  # no staging folder left behind


def test_concurrent_claims_have_exactly_one_winner(tmp_path: Path) -> None:
    job = make_job(tmp_path, "job", tmp_path / "log")
    barrier = threading.Barrier(8)
    tokens: list[str | None] = []

    def contend() -> None:
        barrier.wait()
        tokens.append(cl.claim(job))

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    join(threads, "the claiming threads")
    assert sum(t is not None for t in tokens) == 1
    assert not list(tmp_path.glob(".claim-*"))


def test_lock_status_tells_stale_and_remote_owners(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / cl.LOCK_NAME).write_text(f'{{"host": "{socket.gethostname()}", "pid": {dead.stdout.strip()}}}')
    assert cl.lock_status(job_dir) == "stale"
    (job_dir / cl.LOCK_NAME).write_text('{"host": "some-other-node", "pid": 1}')
    assert cl.lock_status(job_dir) == "remote"
    (job_dir / cl.LOCK_NAME).write_text("garbage")
    assert cl.lock_status(job_dir) == "none"


# ----------------------------------------------------------------------------- local


def test_local_runs_all_jobs_and_a_failure_does_not_stop_the_others(tmp_path: Path, quiet: LauncherOptions) -> None:
    log = tmp_path / "log"
    sweep = tmp_path / "sweep"
    jobs = [make_job(sweep, "a", log), make_job(sweep, "b", log, fail=True), make_job(sweep, "c", log)]
    summary = cl.get_launcher("local")(jobs, quiet)
    assert (summary.started, summary.failed, summary.skipped) == (3, 1, 0)
    assert [line.split()[0] for line in starts(log)] == ["a", "b", "c"]
    assert (sweep / "a" / "done").exists() and (sweep / "c" / "done").exists()
    assert not (sweep / "b" / "done").exists()
    assert "boom" in (sweep / "b" / cl.LOG_NAME).read_text()  # the child's output is kept per job
    assert "hello from a" in (sweep / "a" / cl.LOG_NAME).read_text()
    assert all(cl.lock_status(job.output_dir) == "none" for job in jobs)  # locks released after each job


def test_local_skips_jobs_another_launch_claimed(tmp_path: Path, quiet: LauncherOptions) -> None:
    log = tmp_path / "log"
    jobs = [make_job(tmp_path / "sweep", name, log) for name in "ab"]
    assert cl.claim(jobs[0]) is not None
    summary = local.local_launcher(jobs, quiet)
    assert (summary.started, summary.skipped) == (1, 1)
    assert [line.split()[0] for line in starts(log)] == ["b"]


def test_two_concurrent_local_launches_run_each_job_once(tmp_path: Path, quiet: LauncherOptions, channel) -> None:
    log, started, gate = tmp_path / "log", channel("started"), channel("gate")
    jobs = [make_job(tmp_path / "sweep", f"job{i}", log, gate=gate, started=started) for i in range(4)]
    summaries: list[cl.LaunchSummary] = []
    threads = run_in_threads(*[lambda: summaries.append(local.local_launcher(jobs, quiet))] * 2)
    # Both launches are inside a job at once: the second skipped the first's claim and took the next.
    first = started.wait_lines(2, "both launches to start a job")
    assert sorted(line.split()[0] for line in first) == ["job0", "job1"]
    gate.open()
    join(threads, "the two launches")
    names = sorted(line.split()[0] for line in starts(log))
    assert names == [f"job{i}" for i in range(4)]
    assert sum(s.started for s in summaries) == 4 and sum(s.skipped for s in summaries) == 4
    assert all((job.output_dir / "done").exists() for job in jobs)


# ----------------------------------------------------------------------------- multi_gpu


@pytest.mark.parametrize(
    "env, expected", [("0,1", ["0", "1"]), ("3, 5", ["3", "5"]), ("2,-1,3", ["2"]), ("", []), ("-1", [])]
)
def test_visible_gpus_follows_cuda_visible_devices(monkeypatch, env: str, expected: list[str]) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert local.visible_gpus() == expected


def test_multi_gpu_pins_one_gpu_per_job(tmp_path: Path, quiet: LauncherOptions, monkeypatch, channel) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    log, started, gate = tmp_path / "log", channel("started"), channel("gate")
    jobs = [make_job(tmp_path / "sweep", f"job{i}", log, gate=gate, fail=(i == 1), started=started) for i in range(4)]
    result: list[cl.LaunchSummary] = []
    threads = run_in_threads(lambda: result.append(cl.get_launcher("multi_gpu")(jobs, quiet)))
    # Two GPUs: two jobs run at once, on different GPUs, and no third starts while they hold them.
    first = started.wait_lines(2, "two jobs to start")
    assert sorted(line.split()[1] for line in first) == ["3", "5"]
    assert len(starts(log)) == 2  # both GPUs are taken and the gate is shut: no third job started
    gate.open()
    join(threads, "the multi_gpu launcher")
    summary = result[0]
    assert (summary.started, summary.failed) == (4, 1)
    seen = dict(line.split() for line in starts(log))
    assert sorted(seen) == [f"job{i}" for i in range(4)]
    assert set(seen.values()) <= {"3", "5"}  # each child sees exactly one of the visible GPUs


def test_multi_gpu_without_gpus_says_what_to_do(tmp_path: Path, quiet: LauncherOptions, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(SystemExit, match="no GPU is visible.*--command_launcher local"):
        local.multi_gpu_launcher([make_job(tmp_path, "job", tmp_path / "log")], quiet)


# ----------------------------------------------------------------------------- slurm


def test_slurm_settings_come_from_flags_then_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DOMAINBED_SLURM_TIME", "7")
    monkeypatch.setenv("DOMAINBED_SLURM_CPUS", "3")
    monkeypatch.setenv("DOMAINBED_SUBMITIT_LOCAL", "1")
    executor = slurm.make_executor(tmp_path, LauncherOptions(slurm_cpus=2, slurm_mem=4))
    assert type(executor).__name__ == "LocalExecutor"
    assert executor.parameters["timeout_min"] == 7  # from the environment
    assert executor.parameters["cpus_per_task"] == 2  # the flag wins
    assert executor.parameters["mem_gb"] == 4
    monkeypatch.setenv("DOMAINBED_SLURM_GPUS", "two")
    with pytest.raises(ValueError, match="DOMAINBED_SLURM_GPUS"):
        slurm.make_executor(tmp_path, LauncherOptions())


def test_slurm_without_slurm_points_to_the_local_executor(tmp_path: Path, monkeypatch) -> None:
    import submitit

    monkeypatch.delenv("DOMAINBED_SUBMITIT_LOCAL", raising=False)
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: -1))
    with pytest.raises(SystemExit, match="--slurm_local"):
        slurm.make_executor(tmp_path, LauncherOptions())


def test_slurm_through_local_executor_runs_jobs_and_counts_failures(tmp_path: Path, pythonpath) -> None:
    log = tmp_path / "log"
    sweep = tmp_path / "sweep"
    jobs = [make_job(sweep, "ok", log), make_job(sweep, "bad", log, fail=True)]
    options = LauncherOptions(progress=False, slurm_local=True, slurm_time=2, submitit_dir=tmp_path / "submitit")
    summary = cl.get_launcher("slurm")(jobs, options)
    assert (summary.started, summary.failed) == (2, 1)
    assert (sweep / "ok" / "done").exists() and not (sweep / "bad" / "done").exists()
    assert cl.lock_status(sweep / "ok") == "none"
    assert slurm.slurm_launcher(jobs, options).skipped == 2  # already claimed: never submitted twice


def test_slurm_job_is_requeued_on_preemption_and_resumes(tmp_path: Path, pythonpath, channel) -> None:
    out, ready = tmp_path / "sweep" / "job", channel("ready")
    job = Job(argv=[sys.executable, "-c", PREEMPTIBLE_CODE, str(out), str(ready.path)], output_dir=out)
    options = LauncherOptions(progress=False, slurm_local=True, slurm_time=3, submitit_dir=tmp_path / "submitit")
    result: list[cl.LaunchSummary] = []
    threads = run_in_threads(lambda: result.append(slurm.slurm_launcher([job], options)))
    # The trainer reports its worker's pid once SIGTERM is blocked for sigtimedwait: from then on it checkpoints.
    (worker_pid,) = ready.wait_lines(1, "the job to start")
    # What Slurm does before pre-empting: submitit's USR2 to the worker running our callable.
    os.kill(int(worker_pid), signal.SIGUSR2)
    join(threads, "the slurm launcher")
    assert result and (result[0].started, result[0].failed) == (1, 0)
    assert (out / "starts").read_text().split() == ["fresh", "resumed"]
    assert (out / "checkpoint").exists() and (out / "done").exists()
