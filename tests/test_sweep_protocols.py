"""The two bundled paper protocols: their job counts, step counts and seeds, and the
per-dataset step / checkpoint overrides that the SWAD / MIRO protocol needs."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import pytest

from domainbed.datasets import get_dataset_class
from domainbed.scripts import sweep
from domainbed.sweep import jobs as sweep_jobs

FIVE = ["PACS", "VLCS", "OfficeHome", "TerraIncognita", "DomainNet"]
SEVEN = ["ERM", "CORAL", "SWAD", "MIRO", "ERM_FTLP", "CORAL_FTLP", "SWAD_FTLP"]
# Both paper sweeps pin the published tables' backbone: torchvision's ImageNet ResNet-50 with
# frozen BatchNorm, not DomainBed HEAD's default (timm's AugMix ResNet-50, BatchNorm training).
PUBLISHED = {"backbone": "resnet50", "resnet50_augmix": False, "freeze_bn": True}


def jobs_of(tmp_path, *extra: str):
    args = sweep.parse_args(["status", "--data_dir", "/data", "--output_dir", str(tmp_path / "out"), *extra])
    return [job.train_args for job in sweep.build_jobs(args)]


def test_swad_miro_protocol_is_462_jobs_with_swads_step_counts(tmp_path):
    jobs = jobs_of(tmp_path, "--sweep", "swad_miro")
    # 7 algorithms x 22 single test domains (4 + 4 + 4 + 4 + 6 over the 5 datasets) x 3 trials.
    assert len(jobs) == 7 * (4 + 4 + 4 + 4 + 6) * 3 == 462
    assert len({json.dumps(j, sort_keys=True) for j in jobs}) == 462
    assert Counter(j["dataset"] for j in jobs) == {"PACS": 84, "VLCS": 84, "OfficeHome": 84, "TerraIncognita": 84, "DomainNet": 126}
    assert Counter(j["algorithm"] for j in jobs) == {a: 66 for a in SEVEN}
    assert {j["hparams_seed"] for j in jobs} == {0}  # the fixed default hparams
    assert Counter(j["trial_seed"] for j in jobs) == {0: 154, 1: 154, 2: 154}
    assert all(len(j["test_envs"]) == 1 for j in jobs)
    assert all(json.loads(j["hparams"]) == PUBLISHED for j in jobs)
    steps = {d: {(j["steps"], j["checkpoint_freq"]) for j in jobs if j["dataset"] == d} for d in FIVE}
    assert steps == {
        "PACS": {(5001, 100)}, "VLCS": {(5001, 50)}, "OfficeHome": {(5001, 100)},
        "TerraIncognita": {(5001, 100)}, "DomainNet": {(15001, 500)},
    }


def test_ftlp_paper_protocol_uses_domainbeds_step_counts(tmp_path, monkeypatch):
    # 25,620 job folders are slow to check one by one; the loop and the arguments are what count.
    monkeypatch.setattr(sweep_jobs, "make_job", lambda train_args, sweep_dir, module: SimpleNamespace(train_args=train_args))
    jobs = jobs_of(tmp_path, "--sweep", "ftlp_paper")
    # 22 single test domains + 39 pairs, 7 algorithms, 20 hparams seeds, 3 trials.
    assert len(jobs) == (22 + 6 * 4 + 15) * 7 * 20 * 3 == 25620
    assert not any("steps" in j for j in jobs)  # every dataset's default: DomainBed's 5,001
    assert all(json.loads(j["hparams"]) == PUBLISHED for j in jobs)
    assert {get_dataset_class(d).N_STEPS for d in FIVE} == {5001}


def test_command_line_per_dataset_replaces_the_files(tmp_path):
    jobs = jobs_of(tmp_path, "--sweep", "swad_miro", "--per_dataset", "{}", "--datasets", "DomainNet")
    assert {(j["steps"], j["checkpoint_freq"]) for j in jobs} == {(5001, 100)}
    jobs = jobs_of(tmp_path, "--datasets", "PACS", "VLCS", "--algorithms", "ERM", "--n_hparams", "1",
                   "--per_dataset", '{"VLCS": {"steps": 7}}')
    assert {(j["dataset"], j.get("steps")) for j in jobs} == {("PACS", None), ("VLCS", 7)}


@pytest.mark.parametrize(
    "value,message",
    [
        ('{"PACSS": {"steps": 5}}', "unknown dataset"),
        ('{"PACS": {"step": 5}}', "keys among steps, checkpoint_freq"),
        ('{"PACS": {"steps": 0}}', "positive integer"),
        ('{"PACS": {"steps": true}}', "positive integer"),
        ('{"PACS": 5}', "must be an object"),
    ],
)
def test_bad_per_dataset_values_are_reported(tmp_path, value, message):
    with pytest.raises(SystemExit, match=message):
        sweep.main(["status", "--datasets", "PACS", "--algorithms", "ERM", "--output_dir", str(tmp_path),
                    "--per_dataset", value])
