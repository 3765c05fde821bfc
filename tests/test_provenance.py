"""Provenance of a run: package version, code commit, library versions; sweep status warns on mixed commits."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from domainbed import __version__
from domainbed.scripts import sweep
from domainbed.training import provenance
from domainbed.training.provenance import (
    collect_provenance,
    git_state,
    mixed_commits_warning,
    read_provenance,
    record_provenance,
)

REPO = Path(__file__).resolve().parents[1]


def test_collect_provenance_names_the_versions_and_the_commit():
    info = collect_provenance()
    assert set(info) == {"domainbed", "git_commit", "git_dirty", "python", "torch", "torchvision", "timm"}
    assert info["domainbed"] == __version__
    import timm
    import torch
    import torchvision

    assert (info["torch"], info["torchvision"], info["timm"]) == (torch.__version__, torchvision.__version__,
                                                                 timm.__version__)
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists() or not (REPO / "domainbed" / "__init__.py").samefile(
            Path(provenance.__file__).parents[1] / "__init__.py"):
        pytest.skip("the package under test is not this git checkout")
    head = subprocess.run([git, "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert info["git_commit"] == head
    assert isinstance(info["git_dirty"], bool)


def test_outside_a_checkout_there_is_no_commit_and_no_error(tmp_path):
    package = tmp_path / "site-packages" / "domainbed"
    package.mkdir(parents=True)
    assert git_state(package) == (None, None)
    # A wheel installed in a virtualenv inside some repository: that repository is not ours.
    git = shutil.which("git")
    if git:
        subprocess.run([git, "init", "-q", str(tmp_path)], check=True)
        assert git_state(package) == (None, None)


def test_run_folder_records_it_and_a_resume_with_other_code_is_listed(tmp_path, monkeypatch, capsys):
    first = {**collect_provenance(), "git_commit": "a" * 40, "git_dirty": False}
    monkeypatch.setattr(provenance, "collect_provenance", lambda: first)
    record_provenance(tmp_path)
    record_provenance(tmp_path)  # the same code again: nothing added
    assert read_provenance(tmp_path) == first
    later = {**first, "git_commit": "b" * 40, "git_dirty": True}
    monkeypatch.setattr(provenance, "collect_provenance", lambda: later)
    record_provenance(tmp_path)
    assert read_provenance(tmp_path) == {**first, "resumed_with": [later]}
    assert f"started with code {'a' * 10} and now resumes with {'b' * 10}+dirty" in capsys.readouterr().out
    assert provenance.commits_of(read_provenance(tmp_path)) == ["a" * 10, "b" * 10 + "+dirty"]


def test_a_training_run_writes_provenance_json_and_records_stay_as_they_were(tmp_path):
    from domainbed.scripts import train

    out = tmp_path / "run"
    train.main(["--dataset", "Debug28", "--output_dir", str(out), "--steps", "2", "--checkpoint_freq", "2",
                "--hparams", '{"batch_size": 4}'])
    assert (out / "done").exists()
    assert json.loads((out / "provenance.json").read_text()) == collect_provenance()
    record = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert not {"git_commit", "provenance", "domainbed"} & set(record)


def test_sweep_status_warns_when_jobs_come_from_different_commits(tmp_path, capsys):
    argv = ["status", "--datasets", "Debug28", "--algorithms", "ERM", "--n_hparams", "1", "--n_trials", "1",
            "--single_test_envs", "--test_envs_subset", "0", "1", "--data_dir", str(tmp_path / "data"),
            "--output_dir", str(tmp_path / "sweep")]
    jobs = sweep.build_jobs(sweep.parse_args(argv))
    assert len(jobs) == 2
    info = {**collect_provenance(), "git_dirty": False}
    for job, commit in zip(jobs, ("1" * 40, "1" * 40)):
        job.output_dir.mkdir(parents=True)
        (job.output_dir / "provenance.json").write_text(json.dumps({**info, "git_commit": commit}))
    assert sweep.main(argv) == 0
    assert "different versions" not in capsys.readouterr().out
    (jobs[1].output_dir / "provenance.json").write_text(json.dumps({**info, "git_commit": "2" * 40}))
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert "the jobs ran code from 2 different versions" in out
    assert f"{'1' * 10} (1 jobs)" in out and f"{'2' * 10} (1 jobs)" in out
    assert mixed_commits_warning([tmp_path / "nowhere"]) is None
