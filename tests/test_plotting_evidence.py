"""Figures of the evidence reports: only the domains run, log / symlog axes, paired gains drawn."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from domainbed.results import plotting, plotting_gains  # noqa: E402
from domainbed.results.paired_gains import paired_gains  # noqa: E402

VARIANTS = [("ERM_FTLP", "ERM"), ("SWAD_FTLP", "SWAD")]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    import fixtures_records

    root = tmp_path_factory.mktemp("sweep")
    fixtures_records.write_sweep(root)
    return plotting.load_sweep(root, verbose=False)


def single_env_runs(df: pd.DataFrame, dataset: str, envs: set[int]) -> pd.DataFrame:
    keep = (df["dataset"] == dataset) & (df["n_test_envs"] == 1) & df["test_env"].isin(envs)
    return df[keep].copy()


def test_ftlp_bars_draw_only_the_domains_that_were_run(toy):
    fig = plotting.plot_ftlp_bars(single_env_runs(toy, "ToyA", {0, 2}), "training_domain", pairs=VARIANTS)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["env0", "env2"]
    full = plotting.plot_ftlp_bars(single_env_runs(toy, "ToyA", {0, 1, 2}), "training_domain", pairs=VARIANTS)
    assert [t.get_text() for t in full.axes[0].get_xticklabels()] == ["env0", "env1", "env2"]


def test_loss_curves_use_a_log_axis_and_say_so(toy):
    fig = plotting.plot_curves(toy, keys=("loss",), dataset="ToyA")
    loss_axis = fig.axes[1]
    assert loss_axis.get_yscale() == "log" and "log scale" in loss_axis.get_ylabel()


def test_prior_term_curve_is_symlog_for_negative_values(toy):
    df = toy.copy()
    df.loc[df["algorithm"] == "MIRO", "ftlp_kl"] = -5.8  # MIRO's term is negative since its log-variance fix
    fig = plotting.plot_kl_curve(df, dataset="ToyA")
    ax = fig.axes[0]
    assert ax.get_yscale() == "symlog" and "symlog" in ax.get_ylabel()
    drawn = np.concatenate([line.get_ydata() for line in ax.lines])
    assert drawn.min() == pytest.approx(-5.8)  # the values are drawn as they are, not shifted
    with pytest.raises(ValueError, match="scale must be"):
        plotting.set_value_scale(ax, drawn, "x", "cubic")


def test_paired_gain_figure_draws_the_selected_gains(toy):
    selection = "training_domain"
    comparisons = [("ERM_FTLP", "ERM"), ("SWAD_FTLP", "SWAD"), ("CORAL_FTLP", "CORAL")]
    fig = plotting_gains.plot_paired_gains(toy, selection, comparisons)
    gains = paired_gains(plotting_gains.selected_runs(toy, selection), comparisons)
    ax = fig.axes[0]  # ToyA
    erm = gains[(gains["dataset"] == "ToyA") & (gains["treatment"] == "ERM_FTLP")].set_index("test_env")
    expected = [erm.at[e, "mean"] for e in (0, 1, 2, -1)]
    drawn = [line for line in ax.lines if line.get_label().startswith("ERM_FTLP − ERM")]
    assert len(drawn) == 1
    assert np.allclose(drawn[0].get_ydata(), expected)
    assert "CORAL" not in ax.get_xlabel()  # never run in this sweep: no note (test_figures: when one is due)
    assert [t.get_text() for t in ax.get_xticklabels()][-1].startswith("mean over")


def test_arm_accuracy_figure_has_one_panel_per_dataset_and_every_arm(toy):
    fig = plotting_gains.plot_arm_accuracy(toy, "oracle")
    assert len(fig.axes) == 2
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    # each arm with its number of trials, counted here from the selected runs
    selected = plotting_gains.selected_runs(toy, "oracle")
    trials = selected[selected["dataset"] == "ToyA"].groupby(["algorithm", "test_env"])["trial_seed"].nunique()
    expected = []
    for algorithm, per_env in trials.groupby(level=0):
        low, high = int(per_env.min()), int(per_env.max())
        expected.append(f"{algorithm} (n = {low})" if low == high else f"{algorithm} (n = {low}–{high})")
    assert sorted(legend) == expected
    assert [e.split(" ")[0] for e in expected] == ["ERM", "ERM_FTLP", "MIRO", "SWAD", "SWAD_FTLP"]


def test_evidence_legends_sit_outside_the_panels(toy):
    """With eight arms or six comparisons a legend inside a panel hides points: it goes to the right."""
    six = [("ERM_FTLP", "ERM"), ("CORAL_FTLP", "CORAL"), ("SWAD_FTLP", "SWAD"), ("ERM_FTLP", "MIRO"),
           ("ERM_FTLP", "ERM_FTLP_ShuffledPrior"), ("MIRO", "ERM")]
    for fig in (plotting_gains.plot_paired_gains(toy, "training_domain", six), plotting_gains.plot_arm_accuracy(toy)):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            legend = ax.get_legend()
            assert legend is not None
            assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1
            # and still on the canvas
            assert legend.get_window_extent(renderer).x1 <= fig.bbox.x1 + 1
