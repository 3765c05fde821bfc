"""Evidence v3 (docs/evidence/v3): the committed report regenerates from the committed
records and probe files, and the MIRO scale it states is the probe's."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
V3 = REPO / "docs" / "evidence" / "v3"


def load_report_module():
    spec = importlib.util.spec_from_file_location("make_report_v3", V3 / "make_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_map_regenerates_from_the_committed_records(tmp_path):
    load_report_module().main(["--out", str(tmp_path)])
    assert (tmp_path / "map.md").read_text() == (V3 / "map.md").read_text()
    # the summary table in docs/evidence/README.md is the same generation's
    readme = (V3.parent / "README.md").read_text()
    report = load_report_module()
    block = readme[readme.index(report.SUMMARY_START):readme.index(report.SUMMARY_END) + len(report.SUMMARY_END)]
    assert (tmp_path / "summary.md").read_text() == block + "\n"
    assert (tmp_path / "regime_map.png").stat().st_size > 0
    assert (tmp_path / "map_curves.png").stat().st_size > 0


def test_training_hours_weigh_each_records_step_time_by_the_steps_since_the_previous():
    import pandas as pd
    records = pd.DataFrame({
        "output_dir": ["a", "a", "a", "b", "b"],
        "step": [0, 100, 399, 49, 99],
        "step_time": [2.0, 1.0, 3.0, 0.5, 0.5],
    })
    # a: 1 step at 2 s, 100 at 1 s, 299 at 3 s; b: 50 steps and 50 steps at 0.5 s
    expected = (1 * 2.0 + 100 * 1.0 + 299 * 3.0 + 50 * 0.5 + 50 * 0.5) / 3600
    assert load_report_module().training_hours(records) == expected
    assert load_report_module().training_hours(records.drop(columns="step_time")) == 0.0


def test_lambda_choice_looks_at_validation_on_shared_trials_only():
    import pandas as pd
    rows = [  # (arm, trial, val, test): the default ran two trials, the λ arms one
        ("ERM_FTLP", 0, 0.90, 0.80), ("ERM_FTLP", 1, 0.99, 0.99),
        ("ERM_FTLP[λ=0.01]", 0, 0.95, 0.70), ("ERM_FTLP[λ=1.0]", 0, 0.93, 0.95),
        ("ERM", 0, 0.99, 0.99),  # not a λ arm: never picked
    ]
    selected = pd.DataFrame([{"dataset": "D 64px", "algorithm": a, "trial_seed": t, "val_acc": v, "test_acc": x}
                             for a, t, v, x in rows])
    [line, blank] = load_report_module().lambda_choice_lines(selected)
    # trial 1 (the default's best) is left out; the highest validation wins although its test is lowest
    assert "on the 1 trial(s) every λ ran" in line and "picks **ERM_FTLP[λ=0.01]**" in line
    assert "ERM_FTLP 90.0, ERM_FTLP[λ=0.01] 95.0, ERM_FTLP[λ=1.0] 93.0" in line
    assert line.endswith("its test accuracy there is 70.0 %.") and blank == ""
    assert load_report_module().lambda_choice_lines(selected[selected["algorithm"] != "ERM_FTLP[λ=0.01]"])[0].count(
        "picks **ERM_FTLP[λ=1.0]**") == 1


def test_gain_trend_is_the_weighted_least_squares_slope_over_cells_with_enough_trials():
    import numpy as np
    import pandas as pd
    report = load_report_module()
    cells = ["OfflineDigits 64px", "RotatedMNISTSubset 32px", "RotatedMNISTSubset 64px", "RotatedMNISTSubset 128px"]
    gains = pd.DataFrame({"dataset": cells + ["OfflineDigits 32px"], "comparison": "A − B",
                          "mean": [-1.0, 2.0, 3.5, 1.0, 50.0], "se": [2.0, 0.5, 1.0, 0.4, 0.1],
                          "n": [5, 16, 4, 3, 2], "selection": "training_domain"})
    probe = [report.probe_accuracy(*report.parse_cell(c)) for c in cells]
    # numpy's weighted polyfit with unscaled covariance is the known-variance fit; the n = 2 cell is left out
    coef, cov = np.polyfit(probe, gains["mean"][:4], 1, w=1 / gains["se"][:4], cov="unscaled")
    trend = report.gain_trend(gains, "A − B")
    assert trend["cells"] == 4
    assert trend["slope"] == pytest.approx(10 * coef[0]) and trend["se"] == pytest.approx(10 * np.sqrt(cov[0, 0]))
    assert report.gain_trend(gains.iloc[2:], "A − B") is None  # two cells with n >= 3: no line
    assert report.gain_trend(gains, "A − B", selection="oracle") is None


def test_probe_figures_quoted_in_the_readme_are_the_probe_files():
    readme = (V3 / "README.md").read_text()
    report = load_report_module()
    for dataset, size, frozen, quoted in [("OfflineDigits", 64, True, "19.0"), ("OfflineDigits", 128, True, "36.3"),
                                          ("RotatedMNISTSubset", 64, True, "75.2"),
                                          ("RotatedMNISTSubset", 128, True, "85.7"),
                                          ("OfflineDigits", 32, False, "15.2"), ("RotatedMNISTSubset", 32, False, "30.0")]:
        mode = "frozen" if frozen else "batch"
        data = json.loads((V3 / "probe" / f"{dataset}_efficientnet_lite0_{size}px_bn-{mode}.json").read_text())
        acc = next(d["probe_acc"] for d in data["domains"] if d["index"] == report.TEST_ENV[dataset])
        assert f"{100 * acc:.1f}" == quoted
        assert f" {quoted} |" in readme


def test_the_stage_variances_quoted_in_the_readme_are_the_probes():
    readme = (V3 / "README.md").read_text()
    for size in (64, 128):
        means = [layer["var_mean"]
                 for path in (V3 / "probe").glob(f"*_{size}px_bn-frozen.json")
                 for layer in json.loads(path.read_text())["layers"] if layer["name"] != "final"]
        low, high = min(means), max(means)
        assert low > 0.1, "every regularised stage varies more than MIRO's start value"
        assert f"{low:.2g}–{round(high)}\nat {size} px" in readme or f"{low:.2g}–{round(high)} at {size} px" in readme, \
            (size, low, high)
