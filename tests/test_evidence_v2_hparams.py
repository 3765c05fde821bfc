"""The evidence v2 hparam search: 32 paired jobs, and ERM / ERM_FTLP share their common hparams per seed."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from domainbed.hparams_registry import get_hparams
from domainbed.scripts import sweep

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "sweeps" / "offline_evidence_v2_hparams.json"


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    args = sweep.parse_args(["launch", "--sweep", str(SWEEP), "--output_dir", str(tmp_path_factory.mktemp("hp"))])
    return [j.train_args for j in sweep.build_jobs(args)]


def test_hparam_search_has_the_32_planned_jobs(jobs):
    assert len(jobs) == 32
    assert Counter((j["algorithm"], j["hparams_seed"]) for j in jobs) == {
        (a, h): 4 for a in ("ERM", "ERM_FTLP") for h in (1, 2, 3, 4)}  # seed 0 (defaults) is the main sweep's
    assert {tuple(j["test_envs"]) for j in jobs} == {(0,), (1,), (2,), (3,)}
    assert {(j["dataset"], j["trial_seed"], j["steps"], j["checkpoint_freq"], j["skip_model_save"], j["hparams"])
            for j in jobs} == {("OfflineDigits", 0, 300, 50, True, '{"image_size": 32}')}


def test_hparam_search_seeds_are_paired(jobs):
    seeds = {}
    for j in jobs:
        seeds.setdefault((tuple(j["test_envs"]), j["hparams_seed"]), set()).add(j["seed"])
    assert len(seeds) == 16 and all(len(s) == 1 for s in seeds.values())
    assert len({next(iter(s)) for s in seeds.values()}) == 16  # distinct across domains and hparams seeds


@pytest.mark.parametrize("hparams_seed", [1, 2, 3, 4])
def test_erm_and_erm_ftlp_draw_the_same_shared_hparams(hparams_seed):
    erm = get_hparams("ERM", "OfflineDigits", hparams_seed, 0, {"image_size": 32})
    ftlp = get_hparams("ERM_FTLP", "OfflineDigits", hparams_seed, 0, {"image_size": 32})
    assert {k: ftlp[k] for k in erm} == erm
    assert set(ftlp) - set(erm) == {k for k in ftlp if k.startswith("ftlp_")}
    # A real draw, not the defaults: lr differs from the default 1e-3 and between seeds.
    assert erm["lr"] != get_hparams("ERM", "OfflineDigits", 0, 0)["lr"]


def test_hparam_seeds_draw_different_lambdas():
    lambdas = [get_hparams("ERM_FTLP", "OfflineDigits", h, 0)["ftlp_lambda"] for h in (1, 2, 3, 4)]
    assert len(set(lambdas)) == 4 and all(1e-3 <= lam <= 1.0 for lam in lambdas)


def test_lambda_curve_pairs_runs_by_hparams_seed():
    from domainbed.results import plotting_gains

    rows = []
    for algo, hp, lam, accs in [("ERM_FTLP", 1, 0.01, (0.6, 0.8)), ("ERM_FTLP", 2, 0.1, (0.5, 0.7)),
                                ("ERM", 1, None, (0.55, 0.75)), ("ERM", 2, None, (0.52, 0.70))]:
        for env, acc in enumerate(accs):
            for step, scale in ((0, 0.5), (10, 1.0)):
                hparams = {"lr": 1e-3} | ({"ftlp_lambda": lam} if lam else {})
                rec = {"dataset": "D", "algorithm": algo, "test_envs": (env,), "n_test_envs": 1, "test_env": env,
                       "hparams_seed": hp, "trial_seed": 0, "output_dir": f"{algo}{hp}{env}", "averaged": False,
                       "record_index": step // 10, "step": step, "hparams": hparams}
                for e in (0, 1):
                    rec[f"env{e}_in_acc"] = acc * scale if e == env else 0.9 * scale
                    rec[f"env{e}_out_acc"] = acc * scale if e == env else 0.9 * scale
                rows.append(rec)
    df = pd.DataFrame(rows)
    df["test_env"] = df["test_env"].astype("Int64")
    points = plotting_gains.lambda_points(df, algorithm="ERM_FTLP").set_index("hparams_seed")
    assert points.loc[1, "ftlp_lambda"] == 0.01 and points.loc[2, "ftlp_lambda"] == 0.1
    assert points.loc[1, "test_acc"] == pytest.approx(70.0) and points.loc[2, "test_acc"] == pytest.approx(60.0)
    assert (points["n_domains"] == 2).all()
    fig = plotting_gains.plot_lambda_curve(df, algorithm="ERM_FTLP")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    # λ in [0.01, 0.1]: whole decades around the points, and no minor tick labels to overlap
    assert ax.get_xlim() == pytest.approx((1e-3, 1.0))
    fig.canvas.draw()
    assert all(not t.get_text() for t in ax.xaxis.get_minorticklabels())
    empty = plotting_gains.plot_lambda_curve(None, algorithm="ERM_FTLP")
    assert "no hparam-search records yet" in empty.axes[0].texts[0].get_text()
