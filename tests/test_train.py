"""``train.main`` end to end, in-process: records, files, resume, errors."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fixtures_training import killed_before_checkpoint

from domainbed.algorithms import algorithm_names
from domainbed.lib.errors import UserError
from domainbed.scripts import train
from domainbed.training.atomic_files import read_jsonl
from domainbed.training.faults import FAULT_ENV, STOP_NOTICE
from domainbed.training.integrity import load_verified

slow = pytest.mark.slow

RECORD_KEYS = {"step", "epoch", "loss", "step_time", "mem_gb", "hparams", "args"}
VOLATILE = {"step_time", "mem_gb", "args"}


def run(tmp_path: Path, name: str, *extra: str) -> Path:
    out = tmp_path / name
    train.main(["--dataset", "Debug28", "--output_dir", str(out), "--steps", "7", "--checkpoint_freq", "2",
                "--hparams", '{"batch_size": 8}', *extra])
    return out


def comparable(records):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


def test_debug28_end_to_end_files_and_keys(tmp_path):
    out = run(tmp_path, "erm")
    for name in ("out.txt", "err.txt", "results.jsonl", "model.pt", "done", "args.json"):
        assert (out / name).exists(), name
    assert not (out / "checkpoint.pt").exists()
    records = read_jsonl(out / "results.jsonl")
    assert [r["step"] for r in records] == [0, 2, 4, 6]
    for r in records:
        assert RECORD_KEYS <= set(r)
        for i in range(3):
            assert 0.0 <= r[f"env{i}_in_acc"] <= 1.0 and 0.0 <= r[f"env{i}_out_acc"] <= 1.0
        assert r["args"]["dataset"] == "Debug28" and r["hparams"]["batch_size"] == 8
    line = (out / "results.jsonl").read_text().splitlines()[0]
    assert list(json.loads(line)) == sorted(json.loads(line)), "keys are sorted as in DomainBed"
    assert "Final accuracy per domain" in (out / "out.txt").read_text()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    # A second run of a done job does nothing.
    train.main(["--dataset", "Debug28", "--output_dir", str(out), "--steps", "7", "--checkpoint_freq", "2",
                "--hparams", '{"batch_size": 8}'])
    assert len(read_jsonl(out / "results.jsonl")) == 4


@slow
def test_tensorboard_has_every_loss_and_accuracy(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = run(tmp_path, "coral", "--algorithm", "CORAL")
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for key in ("loss/loss", "loss/loss_ce", "loss/penalty_coral", "acc/env0_in_acc", "acc/env2_out_acc"):
        assert key in tags, tags


@pytest.mark.slow
def test_resume_after_crash_equals_uninterrupted_run(tmp_path):
    ref = read_jsonl(run(tmp_path, "ref") / "results.jsonl")

    # Crash right after the record of step 4 is written but before its checkpoint is saved:
    # the worst moment, since the record must not be duplicated on resume.
    with killed_before_checkpoint(4), pytest.raises(KeyboardInterrupt):
        run(tmp_path, "crash")
    out = tmp_path / "crash"
    assert not (out / "done").exists()
    assert [r["step"] for r in read_jsonl(out / "results.jsonl")] == [0, 2, 4]
    run(tmp_path, "crash")
    resumed = read_jsonl(out / "results.jsonl")
    assert [r["step"] for r in resumed] == [0, 2, 4, 6]
    assert comparable(resumed) == comparable(ref)
    assert "Resuming from step 3" in (out / "out.txt").read_text()
    # TensorBoard: the point of step 4 was written before the crash and again after it: once in the files.
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = [event.step for path in sorted((out / "tensorboard").glob("*tfevents*"))
             for event in EventFileLoader(str(path)).Load()
             if event.HasField("summary") and any(v.tag == "loss/loss" for v in event.summary.value)]
    assert steps == [0, 2, 4, 6]


STOP_DEADLINE_S = 300  # far beyond any normal start-up; reaching it fails the test, loudly


def start_stopped(out: Path, steps: int, checkpoint_freq: int, fault: str) -> tuple[list[str], subprocess.Popen]:
    """A Debug28 run in a real process, returned once the fault hook has stopped it (SIGSTOP)
    at ``fault``: an event, not a guess at how long start-up takes. The hook runs inside the
    training loop, after ``main`` installed its SIGTERM handler, so a signal sent from here
    on meets the handler. A watchdog kills the child if the stop never comes."""
    cmd = [sys.executable, "-m", "domainbed.scripts.train", "--dataset", "Debug28", "--output_dir", str(out),
           "--steps", str(steps), "--checkpoint_freq", str(checkpoint_freq), "--hparams", '{"batch_size": 4}']
    stderr = out.parent / f"{out.name}.stderr"
    with open(stderr, "w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=f, env={**os.environ, FAULT_ENV: fault})
    point = fault.split(":")[0]
    watchdog = threading.Timer(STOP_DEADLINE_S, proc.kill)  # ends the wait below if the stop never comes
    watchdog.start()
    try:
        while True:
            _, status = os.waitpid(proc.pid, os.WUNTRACED)  # returns when the child stops (or ends)
            assert os.WIFSTOPPED(status), (
                f"exited with {os.waitstatus_to_exitcode(status)} before {fault} (killed by the watchdog after "
                f"{STOP_DEADLINE_S} s if -9); stderr: {stderr.read_text()[-2000:]}")
            if f"{STOP_NOTICE} {point} " in stderr.read_text():
                return cmd, proc
            # Stopped by someone else (a job scheduler pausing processes): wait for the hook's stop.
    finally:
        watchdog.cancel()


@slow
def test_sigkill_mid_run_then_resume(tmp_path):
    out = tmp_path / "killed"
    cmd, proc = start_stopped(out, 120, 20, "after_record:3:stop")  # records 0, 20 and 40 written
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert [r["step"] for r in read_jsonl(out / "results.jsonl")] == [0, 20, 40]
    assert not (out / "done").exists()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    steps = [r["step"] for r in read_jsonl(out / "results.jsonl")]
    assert steps == list(range(0, 120, 20)) + [119]
    assert (out / "done").exists()


@slow
def test_sigterm_saves_checkpoint_and_exits_143(tmp_path):
    out = tmp_path / "term"
    # Stopped in step 30 of 60: the handler is installed (it is from the start of main) and the
    # last evaluation was at step 0, so the checkpoint is one taken between evaluations.
    cmd, proc = start_stopped(out, 60, 50, "step:31:stop")
    proc.send_signal(signal.SIGTERM)  # pending while stopped; handled once continued
    proc.send_signal(signal.SIGCONT)
    assert proc.wait(timeout=120) == train.EXIT_PREEMPTED
    # SIGTERM is sent to the process, and the kernel may hand it to one of torch's threads;
    # the main thread then sees the flag a moment later, sometimes only after finishing
    # step 31. Either way the checkpoint is the step the notice was seen in, between evaluations.
    saved = load_verified(out / "checkpoint.pt")["step"]
    assert saved in (30, 31) and not (out / "done").exists()
    assert f"SIGTERM received: checkpoint saved at step {saved}" in (out / "err.txt").read_text()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    assert f"Resuming from step {saved + 1} (1 records kept)" in (out / "out.txt").read_text()
    assert [r["step"] for r in read_jsonl(out / "results.jsonl")] == [0, 50, 59]


@slow
def test_mnist_subset_end_to_end(tmp_path):
    out = tmp_path / "mnist"
    train.main(["--dataset", "RotatedMNISTSubset", "--output_dir", str(out), "--steps", "3", "--checkpoint_freq", "2",
                "--test_envs", "5", "--hparams", '{"batch_size": 4, "image_size": 32}'])
    records = read_jsonl(out / "results.jsonl")
    assert [r["step"] for r in records] == [0, 2]
    assert {f"env{i}_in_acc" for i in range(6)} <= set(records[-1])
    assert records[-1]["hparams"]["backbone"] == "efficientnet_lite0"


def failing_evaluation(error: Exception):
    """A ``Trainer._evaluate`` that raises ``error`` from inside the training loop."""

    def evaluate(self, network):
        raise error

    return evaluate


def test_internal_value_error_in_the_loop_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    """A ValueError that is not a UserError is a bug: no one-line exit 2, the traceback stays."""
    monkeypatch.setattr(train.Trainer, "_evaluate", failing_evaluation(ValueError("an internal bug")))
    out = tmp_path / "bug"
    with pytest.raises(ValueError, match="an internal bug"):
        train.main(["--dataset", "Debug28", "--output_dir", str(out), "--steps", "3", "--hparams", '{"batch_size": 4}'])
    err = (out / "err.txt").read_text()
    assert "Traceback (most recent call last)" in err and "ValueError: an internal bug" in err
    assert "_train" in err, "the traceback shows where in the loop it came from"
    assert "error: an internal bug" not in capsys.readouterr().err
    assert not (out / "done").exists()


def test_user_error_in_the_loop_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train.Trainer, "_evaluate", failing_evaluation(UserError("fix this input")))
    out = tmp_path / "user"
    with pytest.raises(SystemExit) as exc:
        train.main(["--dataset", "Debug28", "--output_dir", str(out), "--steps", "3", "--hparams", '{"batch_size": 4}'])
    assert exc.value.code == 2
    assert "error: fix this input" in (out / "err.txt").read_text()
    assert "Traceback" not in (out / "err.txt").read_text() + capsys.readouterr().err


@pytest.mark.slow
def test_resume_with_other_arguments_is_refused(tmp_path, capsys):
    run(tmp_path, "a", "--skip_model_save")
    (tmp_path / "a" / "done").unlink()
    with pytest.raises(SystemExit):
        run(tmp_path, "a", "--seed", "5")
    assert "different arguments" in capsys.readouterr().err


@slow
@pytest.mark.parametrize("name", algorithm_names())
def test_every_algorithm_trains_end_to_end_on_debug28(tmp_path, name):
    out = run(tmp_path, name, "--algorithm", name)
    records = read_jsonl(out / "results.jsonl")
    assert (out / "done").exists() and records
    if name.startswith("SWAD"):
        assert records[-1]["averaged"] is True and [r["step"] for r in records[:-1]] == [0, 2, 4, 6]
    if "FTLP" in name:  # a true KL (fixed prior variance by default)
        assert all(r["ftlp_kl"] >= 0 for r in records)
    if name == "MIRO":  # -log Q up to a constant: finite, may be negative
        assert all(math.isfinite(r["ftlp_kl"]) for r in records)


@slow
@pytest.mark.parametrize("name", ["ERM_FTLP", "CORAL_FTLP", "SWAD", "SWAD_FTLP", "MIRO"])
def test_ftlp_family_on_mnist_subset_with_efficientnet_prior(tmp_path, name):
    out = tmp_path / name
    train.main(["--dataset", "RotatedMNISTSubset", "--algorithm", name, "--output_dir", str(out), "--steps", "3",
                "--checkpoint_freq", "2", "--test_envs", "5", "--hparams", '{"batch_size": 4}'])
    records = read_jsonl(out / "results.jsonl")
    assert records[0]["hparams"]["backbone"] == "efficientnet_lite0" and records[0]["hparams"]["pretrained"] is True
    if name != "SWAD":
        assert all(math.isfinite(r["ftlp_kl"]) for r in records)
    else:
        assert records[-1]["averaged"] is True


def test_worker_errors_are_reported_without_their_traceback():
    err = ValueError("Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                     '  File "x.py", line 1, in f\ndomainbed.datasets.base.DatasetError: 101 images in a row failed')
    assert train.user_message(err) == "101 images in a row failed"
    assert train.user_message(ValueError("plain")) == "plain"
