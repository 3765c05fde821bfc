"""Figures of paired evidence sweeps: accuracy of every arm, paired gains, the λ curve.

    from domainbed import model_selection
    from domainbed.results import plotting, plotting_gains
    records = plotting.load_sweep("docs/evidence/v2/records")
    comparisons = model_selection.paired_comparisons(records["algorithm"].unique())
    fig = plotting_gains.plot_arm_accuracy(records, "training_domain")
    fig = plotting_gains.plot_paired_gains(records, "training_domain", comparisons)
    fig = plotting_gains.plot_lambda_curve(hparam_records, "training_domain", algorithm="ERM_FTLP")

FT-LP (arXiv 2406.05628) is judged by paired gains over its base. Every gain drawn is one
of :func:`domainbed.results.paired_gains.paired_gains` (mean and SE = sample std / √n over
paired trials, :data:`~domainbed.results.plotting.GAIN_SE_NOTE`), as in the gain tables of
``collect_results`` and the evidence reports; each arm's accuracy is the accuracy tables'
(:func:`domainbed.results.tables.arm_accuracy`, population std / √n,
:data:`~domainbed.results.plotting.SE_NOTE`). The checkpoints are those chosen by
:mod:`domainbed.results.selection`. Only the domains that were run are drawn. Every
function returns the matplotlib ``Figure``.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter

from domainbed.results.layout import sweep_layout
from domainbed.results.paired_gains import AVERAGE, Comparison, comparison_name, paired_gains
from domainbed.results.plotting import (
    GAIN_SE_NOTE,
    SE_NOTE,
    Records,
    _frame,
    bars_with_se,
    display_name,
    n_label,
    outside_legend,
    start_at_zero,
)
from domainbed.results.selection import get_selection_method
from domainbed.results.tables import arm_accuracy


def selected_runs(records: Records, selection: str = "training_domain") -> pd.DataFrame:
    """One selected run per (dataset, algorithm, test_env, trial_seed) under ``selection``."""
    return get_selection_method(selection).select(_frame(records))


def _names(selected: pd.DataFrame, dataset: str) -> tuple[str, ...]:
    return sweep_layout(selected[selected["dataset"] == dataset]).domain_names(dataset)


def _empty_figure(message: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def plot_arm_accuracy(records: Records, selection: str = "training_domain", arms: Sequence[str] | None = None) -> plt.Figure:
    """Test accuracy of every arm per test domain that was run, one panel per dataset; the
    legend gives each arm's number of trials (a range when domains differ), and only cells
    with n ≥ 2 get an error bar (:data:`SE_NOTE`)."""
    selected = selected_runs(records, selection)
    if selected.empty:
        return _empty_figure("no selected runs in these records")
    stats = arm_accuracy(selected)
    datasets = sorted(stats["dataset"].unique())
    fig, axes = plt.subplots(len(datasets), 1, figsize=(12.5, 3.8 * len(datasets)), squeeze=False)
    title = get_selection_method(selection).title
    # One colour per arm across panels.
    palette = list(arms or []) + sorted(set(stats["algorithm"]) - set(arms or []))
    for dataset, ax in zip(datasets, axes[:, 0]):
        part = stats[stats["dataset"] == dataset]
        present = set(part["algorithm"])
        order = [a for a in palette if a in present]
        envs = sorted(part["test_env"].unique())
        names = _names(selected, dataset)
        x = np.arange(len(envs))
        width = 0.8 / len(order)
        colors = plt.get_cmap("tab10").colors
        for k, algo in enumerate(order):
            rows = part[part["algorithm"] == algo].set_index("test_env")
            means = np.array([rows["mean"].get(e, np.nan) for e in envs], dtype=float)
            ses = np.array([rows["se"].get(e, np.nan) for e in envs], dtype=float)
            counts = np.array([rows["n"].get(e, 0) for e in envs], dtype=float)
            bars_with_se(ax, x + (k - (len(order) - 1) / 2) * width, means, ses, counts, width,
                         label=f"{algo} ({n_label(rows['n'])})", color=colors[palette.index(algo) % len(colors)])
        start_at_zero(ax)
        ax.set_xticks(x, [names[e] for e in envs])
        ax.set_xlabel("test domain")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{display_name(dataset)}: every arm ({title})\n{SE_NOTE}", fontsize=9)
        outside_legend(ax)
    fig.tight_layout()
    return fig


def plot_paired_gains(
    records: Records,
    selection: str = "training_domain",
    comparisons: Sequence[Comparison] | None = None,
    required: str = "all",
) -> plt.Figure:
    """Paired gain (points) per test domain and over the benchmark, with SE error bars.

    ``comparisons``: the (treatment, baseline) pairs, e.g.
    :func:`domainbed.model_selection.paired_comparisons` of the algorithms present. Numbers
    are those of :func:`~domainbed.results.paired_gains.paired_gains` (:data:`GAIN_SE_NOTE`);
    a point of one paired trial has no error bar. One panel per dataset. A comparison whose
    two arms both ran on the dataset but never in the same trial is named in the panel's
    note; one whose arms the sweep did not run there is left out without a note.
    ``required``: the domains a trial needs for the mean over domains, ``all`` of the
    dataset's or those ``run`` in the sweep (for sweeps that test only some domains, such
    as the demo).
    """
    if comparisons is None:
        raise ValueError(
            "plot_paired_gains needs comparisons=[(treatment, baseline), ...], e.g. "
            "domainbed.model_selection.paired_comparisons(records['algorithm'].unique())"
        )
    selected = selected_runs(records, selection)
    if selected.empty:
        return _empty_figure("no selected runs in these records")
    if required not in ("all", "run"):
        raise ValueError(f"required must be 'all' or 'run', got {required!r}")
    domains = None
    if required == "run":
        domains = {str(d): sorted(int(e) for e in part["test_env"].unique()) for d, part in selected.groupby("dataset")}
    gains = paired_gains(selected, comparisons, domains)
    datasets = sorted(gains["dataset"].unique())
    fig, axes = plt.subplots(len(datasets), 1, figsize=(12.5, 3.8 * len(datasets)), squeeze=False)
    title = get_selection_method(selection).title
    for dataset, ax in zip(datasets, axes[:, 0]):
        part = gains[gains["dataset"] == dataset]
        run_envs = sorted(selected.loc[selected["dataset"] == dataset, "test_env"].unique())
        names = _names(selected, dataset)
        labels = [c for c in dict.fromkeys(part["comparison"]) if part.loc[part["comparison"] == c, "n"].max() > 0]
        # A note only for comparisons this dataset's records could have paired.
        arms = set(selected.loc[selected["dataset"] == dataset, "algorithm"])
        missing = [comparison_name(t, b) for t, b in dict.fromkeys(comparisons)
                   if {t, b} <= arms and comparison_name(t, b) not in labels]
        x = np.arange(len(run_envs) + 1)
        width = 0.8 / max(len(labels), 1)
        for k, label in enumerate(labels):
            rows = part[part["comparison"] == label].set_index("test_env")
            keys = [*run_envs, AVERAGE]
            means = np.array([rows["mean"].get(e, np.nan) for e in keys], dtype=float)
            ses = np.array([rows["se"].get(e, np.nan) for e in keys], dtype=float)
            counts = np.array([rows["n"].get(e, 0) for e in keys], dtype=float)
            n_avg = int(rows["n"].get(AVERAGE, 0))
            color = f"C{list(dict.fromkeys(gains['comparison'])).index(label) % 10}"  # same colour in every panel
            xs = x + (k - (len(labels) - 1) / 2) * width
            ax.plot(xs, means, "o", color=color, label=f"{label} (n = {n_avg} complete trials)")
            spread = (counts >= 2) & np.isfinite(ses)  # one trial: a point without an error bar
            if spread.any():
                ax.errorbar(xs[spread], means[spread], yerr=ses[spread], fmt="none", capsize=3, color=color)
        ax.set_xlim(-0.5, len(run_envs) + 0.5)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.axvline(len(run_envs) - 0.5, color="grey", lw=0.5, ls=":")
        ax.set_xticks(x, [names[e] for e in run_envs] + ["mean over\n" + ("domains" if required == "all" else "domains run")])
        ax.set_ylabel("paired gain (accuracy points)")
        ax.set_title(f"{display_name(dataset)}: treatment − baseline ({title})\n{GAIN_SE_NOTE}", fontsize=9)
        if labels:
            outside_legend(ax)
        else:
            ax.text(0.5, 0.5, "no paired trial of any comparison on this dataset", ha="center", va="center",
                    transform=ax.transAxes)
        if missing:  # under the axis, where it cannot hide a point or the legend
            ax.set_xlabel("no paired trial yet: " + ", ".join(missing), fontsize=7)
    fig.tight_layout()
    return fig


def lambda_points(
    records: Records, selection: str = "training_domain", *, algorithm: str, key: str = "ftlp_lambda"
) -> pd.DataFrame:
    """One row per (hparams_seed, trial_seed) run set of ``algorithm``: the λ it drew (``key``)
    and its test accuracy (points) at the checkpoint ``selection`` picks, mean over the domains run."""
    df = _frame(records)
    df = df[df["algorithm"] == algorithm]
    cols = ["hparams_seed", "trial_seed", key, "test_acc", "n_domains"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    runs = get_selection_method(selection).run_scores(df)
    drawn = df.drop_duplicates("output_dir").set_index("output_dir")["hparams"].map(lambda h: h.get(key, np.nan))
    runs = runs.assign(**{key: runs["output_dir"].map(drawn).astype(float), "test_acc": 100 * runs["test_acc"].astype(float)})
    out = runs.groupby(["hparams_seed", "trial_seed"], as_index=False).agg(
        **{key: (key, "first"), "test_acc": ("test_acc", "mean"), "n_domains": ("test_env", "nunique")})
    return out[cols]


def plot_lambda_curve(
    records: Records | None, selection: str = "training_domain", *, algorithm: str,
    baseline: str = "ERM", key: str = "ftlp_lambda",
) -> plt.Figure:
    """Test accuracy of ``algorithm`` against the λ each random-search run drew (log x).

    ``baseline`` at the same hparams seed (same shared hparams: lr, batch size, weight
    decay) is drawn at the same x, hollow, joined to its pair by a line. Records without
    any ``algorithm`` run give a figure that says so.
    """
    df = _frame(records) if records is not None else pd.DataFrame()
    points = lambda_points(df, selection, algorithm=algorithm, key=key) if not df.empty else pd.DataFrame()
    if points.empty:
        return _empty_figure(f"no hparam-search records yet ({algorithm} vs its sampled {key})")
    base = lambda_points(df, selection, algorithm=baseline, key=key).drop(columns=[key])
    paired = points.merge(base, on=["hparams_seed", "trial_seed"], how="left", suffixes=("", "_base"))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(paired[key], paired["test_acc"], "o", color="C0", label=f"{algorithm}")
    if paired["test_acc_base"].notna().any():
        ax.plot(paired[key], paired["test_acc_base"], "o", mfc="none", color="C1", label=f"{baseline}, same hparams seed")
        for _, row in paired.dropna(subset=["test_acc_base"]).iterrows():
            ax.plot([row[key]] * 2, [row["test_acc"], row["test_acc_base"]], color="grey", lw=0.8)
    for _, row in paired.iterrows():
        ax.annotate(f"hp {int(row['hparams_seed'])}", (row[key], row["test_acc"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    # whole decades, labelled at their powers of ten only: on a narrow λ range matplotlib
    # labels the minor ticks too, and those labels overlap
    lo, hi = np.log10(paired[key].min()) - 0.05, np.log10(paired[key].max()) + 0.05  # no point on an edge
    ax.set_xlim(10 ** np.floor(lo), 10 ** max(np.ceil(hi), np.floor(lo) + 1))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"{key} drawn by the random search (log scale)")
    ax.set_ylabel("test accuracy, mean over domains run (%)")
    ax.set_title(f"{algorithm}: accuracy against λ ({get_selection_method(selection).title})", fontsize=9)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
