"""What the notebook figures show: whole bars, error bars only with a spread, the tables'
standard errors, notes only for comparisons in the data, the task loss, short titles.

Expected numbers are computed here with :mod:`statistics` from the selected runs,
independently of the pandas code that draws them.
"""

from __future__ import annotations

import math
import statistics

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from domainbed.results import plotting, plotting_gains  # noqa: E402
from domainbed.results.tables import paired_gain_stats  # noqa: E402

# Each FT-LP variant of the toy sweep and its base, and the six comparisons of the evidence v2 report.
VARIANTS = [("ERM_FTLP", "ERM"), ("SWAD_FTLP", "SWAD")]
SIX = [("ERM_FTLP", "ERM"), ("CORAL_FTLP", "CORAL"), ("SWAD_FTLP", "SWAD"), ("ERM_FTLP", "MIRO"),
       ("ERM_FTLP", "ERM_FTLP_ShuffledPrior"), ("MIRO", "ERM")]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    import fixtures_records

    root = tmp_path_factory.mktemp("sweep")
    fixtures_records.write_sweep(root)
    return plotting.load_sweep(root, verbose=False)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    matplotlib.pyplot.close("all")


def single_runs(df: pd.DataFrame, dataset: str = "ToyA") -> pd.DataFrame:
    return df[(df["dataset"] == dataset) & (df["n_test_envs"] == 1)].copy()


def error_segments(ax) -> list[np.ndarray]:
    """Every error-bar segment drawn on ``ax`` ((x, y_low), (x, y_high)), from its containers."""
    out = []
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer):
            for collection in container.lines[2]:
                out += [np.asarray(s) for s in collection.get_segments()]
    return out


def half_lengths(ax) -> list[float]:
    return sorted(round(float(s[1, 1] - s[0, 1]) / 2, 6) for s in error_segments(ax))


def population_se(values: list[float]) -> float:
    return statistics.pstdev(values) / math.sqrt(len(values))


def bar_figures(df: pd.DataFrame):
    return {
        "ftlp_bars": plotting.plot_ftlp_bars(df, "training_domain", pairs=VARIANTS),
        "arm_accuracy": plotting_gains.plot_arm_accuracy(df, "training_domain"),
    }


# ----------------------------------------------------------------------------- whole bars

def test_bar_axes_start_at_zero_so_no_bar_is_cut(toy):
    for name, fig in bar_figures(toy).items():
        for ax in fig.axes:
            bars = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_height() > 0]
            assert bars, name
            low, high = ax.get_ylim()
            assert low <= 0.0, f"{name}: y axis starts at {low:.1f}, above the bars' base"
            assert high >= max(b.get_y() + b.get_height() for b in bars), name


# ----------------------------------------------------------------------------- n = 1

def test_cells_of_one_trial_have_no_error_bar_and_say_n(toy):
    one_trial = toy[toy["trial_seed"] == 0]
    figures = {**bar_figures(one_trial),
               "paired_gains": plotting_gains.plot_paired_gains(one_trial, "training_domain", [("ERM_FTLP", "ERM")])}
    for name, fig in figures.items():
        ax = fig.axes[0]
        assert error_segments(ax) == [], f"{name} draws error bars for n = 1"
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend and all("n = 1" in text for text in legend), (name, legend)
        assert "no error bar where n = 1" in ax.get_title()


def test_error_bars_only_where_a_cell_has_two_trials_or_more(toy):
    df = single_runs(toy)
    df = df[(df["test_env"] != 0) | (df["trial_seed"] == 0)]  # env0: one trial; env1, env2: three
    fig = plotting.plot_ftlp_bars(df, "training_domain", pairs=VARIANTS)
    segments = error_segments(fig.axes[0])
    # ERM, ERM_FTLP, SWAD, SWAD_FTLP: one error bar each at env1 and env2 (x = 1, 2), none at env0 (x = 0)
    assert len(segments) == 4 * 2
    assert all(s[0, 0] > 0.5 for s in segments)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "ERM (n = 1–3)" in legend
    gains = plotting_gains.plot_paired_gains(df, "training_domain", [("ERM_FTLP", "ERM")], required="run")
    # env1, env2 (x = 1, 2) with three paired trials; env0 and the mean over domains (one complete trial) without
    assert sorted(round(s[0, 0]) for s in error_segments(gains.axes[0])) == [1, 2]


# ----------------------------------------------------------------------------- one SE convention

def sample_se(values: list[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values))


def test_paired_gain_error_bars_are_the_gain_tables_sample_se(toy):
    selection = "training_domain"
    fig = plotting_gains.plot_paired_gains(toy, selection, [("ERM_FTLP", "ERM")])
    selected = plotting_gains.selected_runs(toy, selection)
    part = selected[selected["dataset"] == "ToyA"]
    acc = {(r.algorithm, r.trial_seed, r.test_env): 100 * r.test_acc for r in part.itertuples()}
    trials = sorted(part["trial_seed"].unique())
    diff = {(t, e): acc[("ERM_FTLP", t, e)] - acc[("ERM", t, e)] for t in trials for e in range(3)}
    expected = [sample_se([diff[(t, e)] for t in trials]) for e in range(3)]
    expected.append(sample_se([statistics.mean(diff[(t, e)] for e in range(3)) for t in trials]))
    assert half_lengths(fig.axes[0]) == pytest.approx(sorted(expected), abs=1e-6)
    # the same numbers as the collect_results gain table beside the figure
    table = paired_gain_stats(selected, [("ERM_FTLP", "ERM")])
    table = table[table["dataset"] == "ToyA"].sort_values("test_env")
    assert list(100 * table["se"].astype(float)) == pytest.approx(expected[:3], abs=1e-9)
    assert "sample std (ddof 1)" in fig.axes[0].get_title()


def test_arm_accuracy_error_bars_are_the_tables_population_se(toy):
    fig = plotting_gains.plot_arm_accuracy(toy, "oracle")
    selected = plotting_gains.selected_runs(toy, "oracle")
    part = selected[selected["dataset"] == "ToyA"]
    expected = [population_se(list(100 * g["test_acc"].astype(float))) for _, g in part.groupby(["algorithm", "test_env"])]
    assert half_lengths(fig.axes[0]) == pytest.approx(sorted(expected), abs=1e-6)


# ----------------------------------------------------------------------------- footnotes

def test_paired_gain_note_names_only_comparisons_whose_arms_ran(toy):
    fig = plotting_gains.plot_paired_gains(toy, "training_domain", SIX)
    note = fig.axes[0].get_xlabel()  # ToyA ran ERM, ERM_FTLP, MIRO, SWAD, SWAD_FTLP
    assert "CORAL" not in note and "ShuffledPrior" not in note
    # both arms ran, but never in the same trial: that comparison is named
    df = toy[~((toy["algorithm"] == "MIRO") & (toy["trial_seed"] != 0))]
    df = df[~((df["algorithm"] == "ERM_FTLP") & (df["trial_seed"] == 0))]
    note = plotting_gains.plot_paired_gains(df, "training_domain", SIX).axes[0].get_xlabel()
    assert note == "no paired trial yet: ERM_FTLP − MIRO"


# ----------------------------------------------------------------------------- task loss

def test_loss_panel_compares_the_task_loss_without_the_prior_term(toy):
    df = single_runs(toy)
    ftlp = df["algorithm"] == "ERM_FTLP"
    df.loc[ftlp, "loss"] = df.loc[ftlp, "loss_ce"] + 5.0 * df.loc[ftlp, "ftlp_kl"]  # the minimised total
    fig = plotting.plot_curves(df)
    panel = fig.axes[1]
    assert "task loss" in panel.get_title()
    drawn = {line.get_label(): line.get_ydata() for line in panel.lines}
    for algorithm in ("ERM", "ERM_FTLP"):
        expected = df[df["algorithm"] == algorithm].groupby("step")["loss_ce"].mean().to_numpy()
        assert np.allclose(drawn[algorithm], expected), algorithm
    prior = plotting.plot_kl_curve(df).axes[0]  # the prior term in its own panel
    assert sorted(line.get_label() for line in prior.lines) == ["ERM_FTLP", "SWAD_FTLP"]  # only arms with a prior
    assert "prior term" in prior.get_title()


# ----------------------------------------------------------------------------- titles

def test_titles_name_a_folder_dataset_by_its_folder(toy, tmp_path):
    folder = tmp_path / "a" / "long" / "path" / "MyDigits"
    for env in range(3):
        (folder / f"env{env}").mkdir(parents=True)
    df = toy.copy()
    df.loc[df["dataset"] == "ToyA", "dataset"] = str(folder)
    figures = [
        plotting.plot_ftlp_bars(df, "training_domain", dataset=str(folder), pairs=VARIANTS),
        plotting_gains.plot_arm_accuracy(df[df["dataset"] == str(folder)]),
        plotting_gains.plot_paired_gains(df[df["dataset"] == str(folder)], "training_domain", SIX),
        plotting.plot_curves(df, dataset=str(folder)),
    ]
    for fig in figures:
        titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
        assert titles and all(t.startswith("MyDigits:") and str(tmp_path) not in t for t in titles), titles
    assert plotting.display_name("PACS") == "PACS"
    assert plotting.display_name("/data/digits/") == "digits"
