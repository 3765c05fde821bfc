"""ERM++'s auto-LR selection rule (DomainBed HEAD's ``IIDAutoLRAccuracySelectionMethod``).

An auto-LR job writes two passes into one ``results.jsonl``: a first with held-out ``out``
splits (``env{i}_out_acc``, holdout_fraction 0.2), then one on the full training data
(``fd_env{i}_in_acc``, holdout_fraction 0). DomainBed's ``collect_results --auto_lr`` merges
the records of a run into one (each key's last value), scores it by the mean training-env
``out`` accuracy and reports the full-data model's ``fd_env{t}_in_acc``. The numbers below
are worked out by hand from that description.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from domainbed import model_selection
from domainbed.lib.query import Q
from domainbed.scripts import collect_results

RULE = "training_domain_auto_lr"


def _record(seed: int, trial: int, step: int, holdout: float, accs: dict[str, float]) -> dict:
    args = {"dataset": "Toy", "algorithm": "ERM", "test_envs": [0], "hparams_seed": seed, "trial_seed": trial,
            "holdout_fraction": holdout, "output_dir": f"/sweep/{seed}-{trial}"}
    return {"step": step, "args": args, "hparams": {"lr": 10.0 ** -(seed + 3)}, **accs}


def _first(out1: float, out2: float, in0: float = 0.2) -> dict[str, float]:
    """A first-pass checkpoint: every split of the three envs."""
    return {"env0_in_acc": in0, "env0_out_acc": 0.9, "env1_in_acc": 0.5, "env1_out_acc": out1,
            "env2_in_acc": 0.5, "env2_out_acc": out2}


def _full(test: float) -> dict[str, float]:
    """A full-data checkpoint: ``in`` splits only, with the fd_ prefix."""
    return {"fd_env0_in_acc": test, "fd_env1_in_acc": 0.95, "fd_env2_in_acc": 0.95}


def _run(seed: int, trial: int, first: list[tuple[float, float]], full: list[float]) -> list[dict]:
    records = [_record(seed, trial, 100 * k, 0.2, _first(*outs)) for k, outs in enumerate(first)]
    return records + [_record(seed, trial, 100 * k, 0.0, _full(test)) for k, test in enumerate(full)]


# Trial 0. Seed 0: last first-pass checkpoint scores (0.6 + 0.8) / 2 = 0.7 (its earlier 0.9
# does not count: a run is its merged, i.e. last, values); full-data model 0.41.
# Seed 1: scores (0.8 + 0.8) / 2 = 0.8 -> wins; its full-data model: 0.63.
# Trial 1. Seed 0 alone: 0.55. Seed 1 has no full-data pass: it cannot be scored.
RECORDS = (
    _run(0, 0, [(0.9, 0.9), (0.6, 0.8)], [0.30, 0.41])
    + _run(1, 0, [(0.8, 0.8)], [0.50, 0.63])
    + _run(0, 1, [(0.5, 0.5)], [0.55])
    + _run(1, 1, [(0.99, 0.99)], [])
)


def test_the_rule_is_registered_but_not_a_default():
    rule = model_selection.get_selection_method(RULE)
    assert isinstance(rule, model_selection.TrainingDomainAutoLR)
    assert RULE in model_selection.SELECTION_METHODS and RULE not in model_selection.DEFAULT_SELECTION


def test_the_rule_scores_the_merged_run_and_reports_the_full_data_model():
    from domainbed.results.records import records_frame

    selected = model_selection.get_selection_method(RULE).select(records_frame(RECORDS))
    got = {(int(r["trial_seed"]), int(r["hparams_seed"])): (r["val_acc"], r["test_acc"]) for _, r in selected.iterrows()}
    assert got == {(0, 1): pytest.approx((0.8, 0.63)), (1, 0): pytest.approx((0.5, 0.55))}


def test_domainbeds_class_name_gives_the_same_numbers():
    cls = model_selection.IIDAutoLRAccuracySelectionMethod
    assert cls.name == "auto lr training-domain validation set"
    trial0 = Q(RECORDS).filter(lambda r: r["args"]["trial_seed"] == 0)
    assert cls.sweep_acc(trial0) == pytest.approx(0.63)
    ranked = cls.hparams_accs(trial0)
    assert [accs["val_acc"] for accs, _ in ranked] == pytest.approx([0.8, 0.7])
    # One merged record per run, as DomainBed's collect_results hands it over: same answer.
    merged = []
    for seed in (0, 1):
        run: dict = {}
        for record in trial0.filter(lambda r, s=seed: r["args"]["hparams_seed"] == s):
            run.update(record)
        merged.append(run)
    assert cls.sweep_acc(Q(merged)) == pytest.approx(0.63)
    no_full_pass = Q(RECORDS).filter(lambda r: r["args"]["trial_seed"] == 1 and r["args"]["hparams_seed"] == 1)
    assert cls.sweep_acc(no_full_pass) is None


def _write_sweep(root: Path, records: list[dict]) -> None:
    for record in records:
        job = root / Path(record["args"]["output_dir"]).name
        job.mkdir(parents=True, exist_ok=True)
        with open(job / "results.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        (job / "done").write_text("done")


def _main(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        collect_results.main(argv)
    return out.getvalue()


def test_collect_results_auto_lr_flag_reports_the_rule_alone(tmp_path):
    _write_sweep(tmp_path, RECORDS)
    text = _main(["--input_dir", str(tmp_path), "--auto_lr"])
    assert text.count("===== Model selection:") == 1
    assert "===== Model selection: training-domain validation, full-data model (auto-LR) =====" in text
    # Test env 0 only: trial 0 reports 63.0, trial 1 reports 55.0 -> 59.0 +/- 2.8 (population std 4.0 / sqrt 2).
    assert "59.0 +/- 2.8" in text
    assert text == _main(["--input_dir", str(tmp_path), "--selection", RULE])


def test_a_sweep_without_a_full_data_pass_says_so(tmp_path):
    _write_sweep(tmp_path, [r for r in RECORDS if r["args"]["holdout_fraction"] > 0])
    text = _main(["--input_dir", str(tmp_path), "--auto_lr"])
    assert "no run has full-data records (fd_env*_in_acc)" in text
