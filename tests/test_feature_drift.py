"""Feature drift from the prior: linear CKA and mean squared distance (checked against
independent computations and hand-worked examples), one job's measurement, the command
line (resumable, skips), and the evidence v3 report's drift table."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from domainbed.inference.feature_drift import (
    DriftError,
    batches,
    image_indices,
    linear_cka,
    mean_squared_distance,
    measure_job,
    resolve_bn,
    total_variance,
    use_batch_statistics,
)
from domainbed.networks import build_featurizer
from domainbed.scripts import feature_drift as script
from domainbed.scripts import train
from domainbed.training.atomic_files import save_verified
from domainbed.training.integrity import load_verified

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- the measures


def gram_cka(x: np.ndarray, y: np.ndarray) -> float:
    """CKA as the normalised HSIC of the linear Gram matrices, HSIC(K, L) = tr(KHLH) / (n−1)²."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.trace(a @ h @ b @ h)) / (n - 1) ** 2

    return hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))


def features(n: int = 40, p: int = 7, q: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g, dtype=torch.float64) + 3.0
    y = x[:, :q] @ torch.randn(q, q, generator=g, dtype=torch.float64) + 0.5 * torch.randn(n, q, generator=g,
                                                                                            dtype=torch.float64)
    return x, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cka_matches_the_gram_matrix_hsic_formula(seed):
    x, y = features(seed=seed)
    assert linear_cka(x, y) == pytest.approx(gram_cka(x.numpy(), y.numpy()), rel=1e-10)
    # Unrelated features: the same formula, far from 1.
    g = torch.Generator().manual_seed(100 + seed)
    z = torch.randn(40, 9, generator=g, dtype=torch.float64)
    assert linear_cka(x, z) == pytest.approx(gram_cka(x.numpy(), z.numpy()), rel=1e-10)
    assert linear_cka(x, z) < 0.6


def test_cka_is_invariant_to_rotations_isotropic_scale_and_shifts_and_is_1_for_identical_inputs():
    x, y = features()
    q, _ = torch.linalg.qr(torch.randn(7, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    base = linear_cka(x, y)
    assert linear_cka(x @ q, y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(4.5 * x, 0.01 * y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x + 100.0, y - 7.0) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 2.0 * x @ q) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(y, x) == pytest.approx(base, rel=1e-12)  # symmetric
    # Not invariant to an anisotropic scale.
    assert linear_cka(x * torch.tensor([10.0, 1, 1, 1, 1, 1, 1], dtype=torch.float64), y) != pytest.approx(base)


def test_cka_by_hand():
    # One feature each: CKA is the squared correlation. Centred: x (−1.5, −.5, .5, 1.5),
    # y (−1.5, .5, −.5, 1.5): x·y = 4, |x|² = |y|² = 5, so 16 / 25.
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    y = torch.tensor([[1.0], [3.0], [2.0], [4.0]])
    assert linear_cka(x, y) == pytest.approx(0.64, abs=1e-12)
    # A second feature dropped: XᵀX = diag(2, 2), YᵀY = diag(2, 0), YᵀX = diag(2, 0):
    # 4 / (√8 · 2) = 1 / √2.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0], [0.0, 0.0]])
    assert linear_cka(x, y) == pytest.approx(1 / math.sqrt(2), abs=1e-12)


def test_cka_of_constant_features_is_nan_and_bad_shapes_are_refused():
    x, _ = features()
    assert math.isnan(linear_cka(x, torch.ones(40, 3)))
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(x, x[:10])
    with pytest.raises(ValueError, match="pooled features"):
        linear_cka(x[None], x[None])


def test_mean_squared_distance_is_summed_over_dimensions_and_averaged_over_samples():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    assert mean_squared_distance(x, y) == pytest.approx(12.5)  # (25 + 0) / 2, not / 2 / 2
    assert mean_squared_distance(x, x) == 0.0
    a, b = features(q=7)
    assert mean_squared_distance(a, b) == pytest.approx(float(((a - b) ** 2).sum() / len(a)))
    with pytest.raises(ValueError, match="same shape"):
        mean_squared_distance(x, y[:, :1])
    # The prior's spread: the distance of a copy that always outputs the mean feature.
    assert total_variance(y) == pytest.approx(mean_squared_distance(y, y.mean(0, keepdim=True).expand_as(y)))


# ----------------------------------------------------------------------------- one job


def test_subset_and_batches_are_seeded_and_cover_every_image_once():
    idx, subset = image_indices(10, 2000, 0)
    assert subset == "all" and list(idx) == list(range(10))
    idx, subset = image_indices(5000, 300, 4)
    assert subset == "seeded 4" and len(idx) == 300 and len(set(idx)) == 300 and list(idx) == sorted(idx)
    assert list(image_indices(5000, 300, 4)[0]) == list(idx)
    groups = batches(np.arange(41), 20, 0)
    assert [len(g) for g in groups] == [14, 14, 13]  # no batch of one
    assert sorted(np.concatenate(groups)) == list(range(41))
    assert [list(g) for g in batches(np.arange(41), 20, 0)] == [list(g) for g in groups]


def test_batchnorm_mode_follows_freeze_bn_and_batch_statistics_leave_running_statistics_alone():
    hp = {"backbone": "efficientnet_lite0", "pretrained": False}
    frozen = build_featurizer((3, 32, 32), {**hp, "freeze_bn": True})
    trained_bn = build_featurizer((3, 32, 32), {**hp, "freeze_bn": False})
    assert resolve_bn(frozen, "as_trained") == "running"
    assert resolve_bn(trained_bn, "as_trained") == "batch"
    assert resolve_bn(frozen, "batch") == "batch"
    assert resolve_bn(build_featurizer((3, 28, 28), {"backbone": "mnist_cnn"}), "as_trained") == "none"
    with pytest.raises(ValueError, match="bn must be"):
        resolve_bn(frozen, "frozen")
    net = trained_bn.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    use_batch_statistics(net)
    with torch.no_grad():
        net(torch.randn(8, 3, 32, 32))
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "num_batches_tracked" not in k)
    assert not net.dropout.training


def train_job(out: Path, hparams: dict, steps: int = 3) -> Path:
    train.main(["--dataset", "Debug28", "--output_dir", str(out), "--steps", str(steps), "--checkpoint_freq",
                str(steps), "--test_envs", "0", "--hparams", json.dumps({"batch_size": 4, **hparams})])
    return out


LITE = {"backbone": "efficientnet_lite0", "pretrained": False, "freeze_bn": False}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("drift_sweep")
    train_job(root / "cnnjob", {})
    train_job(root / "litejob", LITE)
    return root


def untouched_copy(job: Path, dest: Path, seed: int = 0) -> Path:
    """``job`` with its featurizer's weights replaced by the prior's own (the network the
    job's hparams build under ``seed``): a job whose features never moved."""
    shutil.copytree(job, dest)
    model = load_verified(dest / "model.pt")
    torch.manual_seed(seed)
    prior = build_featurizer(tuple(model["input_shape"]), model["hparams"])
    state = dict(model["model_dict"])
    state.update({f"featurizer.{k}": v for k, v in prior.state_dict().items()})
    model["model_dict"] = state
    model.pop("sha256", None)
    save_verified(model, dest / "model.pt")
    return dest


@pytest.mark.slow
def test_a_job_whose_features_never_moved_has_cka_1_and_distance_0(sweep, tmp_path):
    for name, modes in (("cnnjob", ("as_trained",)), ("litejob", ("as_trained", "running"))):
        job = untouched_copy(sweep / name, tmp_path / name)
        for bn in modes:
            drift = measure_job(job, bn=bn)
            assert drift.cka == pytest.approx(1.0, abs=1e-6), (name, bn)
            assert drift.msd == pytest.approx(0.0, abs=1e-8), (name, bn)
            assert drift.prior_spread > 0


@pytest.mark.slow
def test_a_trained_job_is_measured_on_its_whole_test_domain(sweep):
    drift = measure_job(sweep / "litejob")
    row = drift.to_json()
    assert (row["job"], row["dataset"], row["algorithm"], row["test_env"], row["trial_seed"]) == (
        "litejob", "Debug28", "ERM", 0, 0)
    assert row["fixed_hparams"] == {"batch_size": 4, **LITE}
    assert (row["n"], row["n_domain"], row["subset"], row["bn"], row["prior"]) == (32, 32, "all", "batch", "random init")
    assert row["image_size"] == 28  # what the dataset renders (Debug28 ignores the hparam)
    assert row["step"] == 2 and 0 <= row["cka"] <= 1 and row["msd"] > 0
    json.dumps(row)  # plain JSON values
    again = measure_job(sweep / "litejob")
    assert (again.cka, again.msd) == (drift.cka, drift.msd)  # deterministic
    part = measure_job(sweep / "litejob", max_images=10, bn="running")
    assert (part.n, part.subset, part.bn) == (10, "seeded 0", "running")


def test_a_job_without_weights_or_with_foreign_weights_is_a_drift_error(sweep, tmp_path):
    job = shutil.copytree(sweep / "cnnjob", tmp_path / "noweights")
    (job / "model.pt").unlink()
    with pytest.raises(DriftError, match="no model.pt"):
        measure_job(job)
    job = shutil.copytree(sweep / "cnnjob", tmp_path / "foreign")
    shutil.copy(sweep / "litejob" / "model.pt", job / "model.pt")
    model = load_verified(job / "model.pt")
    model["hparams"] = {**model["hparams"], "backbone": "mnist_cnn"}
    model.pop("sha256", None)
    save_verified(model, job / "model.pt")
    with pytest.raises(DriftError, match="does not fit"):
        measure_job(job)


# ----------------------------------------------------------------------------- the command line


def test_command_line_writes_one_line_per_finished_job_and_resumes(sweep, tmp_path, capsys):
    root = tmp_path / "sweep"
    for name in ("cnnjob", "cnnjob2"):
        shutil.copytree(sweep / "cnnjob", root / name)
    shutil.copytree(sweep / "cnnjob", root / "running")
    (root / "running" / "done").unlink()
    shutil.copytree(sweep / "cnnjob", root / "noweights")
    (root / "noweights" / "model.pt").unlink()
    out = tmp_path / "drift.jsonl"
    assert script.main(["--input_dir", str(root), "--out", str(out), "--no_progress"]) == 0
    summary = capsys.readouterr().out
    assert "4 jobs" in summary and "2 measured" in summary and "1 without model.pt (skipped)" in summary
    assert "1 not finished" in summary
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["job"] for r in rows) == ["cnnjob", "cnnjob2"]
    for row in rows:
        assert {"job", "dataset", "algorithm", "test_env", "trial_seed", "image_size", "fixed_hparams", "cka", "msd",
                "n"} <= set(row)
    # Resumable: nothing is measured twice; a line cut short by a kill is dropped and redone.
    assert script.main(["--input_dir", str(root), "--out", str(out), "--no_progress"]) == 0
    assert "2 already in" in capsys.readouterr().out and len(out.read_text().splitlines()) == 2
    lines = out.read_text().splitlines(keepends=True)
    out.write_text(lines[0] + lines[1][:30])
    assert script.main(["--input_dir", str(root), "--out", str(out), "--no_progress"]) == 0
    assert "1 measured" in capsys.readouterr().out
    assert sorted(json.loads(line)["job"] for line in out.read_text().splitlines()) == ["cnnjob", "cnnjob2"]


def test_command_line_errors_are_actionable(tmp_path, capsys):
    assert script.main(["--input_dir", str(tmp_path / "absent"), "--out", str(tmp_path / "d.jsonl")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n{}\n")
    assert script.main(["--input_dir", str(tmp_path), "--out", str(bad)]) == 2
    assert "not a drift record" in capsys.readouterr().err


@pytest.mark.slow
def test_a_pretrained_job_starts_at_the_prior(tmp_path):
    """RotatedMNISTSubset at 32 px, EfficientNet-Lite0 from the local weights, frozen
    BatchNorm, one step at a tiny learning rate: the features are still the prior's."""
    job = tmp_path / "rm"
    train.main(["--dataset", "RotatedMNISTSubset", "--output_dir", str(job), "--steps", "1", "--checkpoint_freq", "1",
                "--test_envs", "5", "--hparams", json.dumps({"batch_size": 4, "freeze_bn": True, "lr": 1e-7})])
    drift = measure_job(job)
    assert (drift.prior, drift.bn, drift.image_size, drift.n) == ("pretrained", "running", 32, drift.n_domain)
    assert drift.cka > 0.999 and drift.msd < 1e-3 * drift.prior_spread


# ----------------------------------------------------------------------------- the evidence report


def report_module():
    spec = importlib.util.spec_from_file_location("make_report_v3_drift", REPO / "docs" / "evidence" / "v3" /
                                                  "make_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_drift_table_joins_on_recorded_jobs_and_is_absent_without_the_file(tmp_path, monkeypatch):
    report = report_module()
    monkeypatch.setattr(report, "DRIFT", tmp_path / "drift.jsonl")
    records = pd.DataFrame({
        "output_dir": ["/x/records/a", "/x/records/a", "/x/records/b", "/x/records/c"],
        "dataset": ["RotatedMNISTSubset 64px"] * 3 + ["RotatedMNISTSubset 128px"],
        "algorithm": ["ERM", "ERM", "ERM", "ERM_FTLP"],
    })
    assert report.drift_lines(records) == []
    rows = [{"job": "a", "cka": 0.5, "msd": 10.0, "prior_spread": 20.0},
            {"job": "b", "cka": 0.7, "msd": 30.0, "prior_spread": 20.0},
            {"job": "c", "cka": 0.9, "msd": 1.0, "prior_spread": 4.0},
            {"job": "not_recorded", "cka": 0.1, "msd": 1.0, "prior_spread": 1.0}]
    (tmp_path / "drift.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = report.drift_lines(records)
    assert lines[0] == "## Feature drift on the held-out domain"
    table = [line for line in lines if line.startswith("| RotatedMNISTSubset")]
    # 64 px before 128 px; ERM: mean 0.6, SE = std(0.5, 0.7) / √2 = 0.1; MSD mean 20, over spread 1.0.
    assert table == ["| RotatedMNISTSubset 64px | ERM | 0.600 ± 0.100 | 20.0 | 1.00 | 2 |",
                     "| RotatedMNISTSubset 128px | ERM_FTLP | 0.900 | 1.0 | 0.25 | 1 |"]
