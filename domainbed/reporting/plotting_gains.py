"""Figures of paired evidence sweeps: accuracy of every arm, paired gains, the λ curve.

    from domainbed.reporting import plotting, plotting_gains
    records = plotting.load_sweep("docs/evidence/v2/records")
    fig = plotting_gains.plot_arm_accuracy(records, "training_domain")
    fig = plotting_gains.plot_paired_gains(records, "training_domain")
    fig = plotting_gains.plot_lambda_curve(hparam_records, "training_domain")

FT-LP (arXiv 2406.05628) is judged by paired gains over its base; the statistics are those of
:mod:`domainbed.lib.paired_gains` (mean ± SE over trials, SE with ddof = 1), the checkpoints
those chosen by :mod:`domainbed.lib.selection`. Only the domains that were run are drawn.
Every function returns the matplotlib ``Figure``.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter

from domainbed.lib.paired_gains import AVERAGE, EVIDENCE_COMPARISONS, arm_accuracy, paired_gains
from domainbed.lib.selection import get_selection_method
from domainbed.reporting.layout import sweep_layout
from domainbed.reporting.plotting import Records, _frame

SE_NOTE = "mean ± SE over trials, SE = sample std (ddof=1)/√n"


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


def outside_legend(ax: plt.Axes) -> None:
    """The legend to the right of the panel: with many arms or comparisons it would hide points."""
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def plot_arm_accuracy(records: Records, selection: str = "training_domain", arms: Sequence[str] | None = None) -> plt.Figure:
    """Test accuracy of every arm per test domain that was run, one panel per dataset; the
    legend gives each arm's number of trials (a range when domains differ)."""
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
            ses = np.nan_to_num(np.array([rows["se"].get(e, np.nan) for e in envs], dtype=float))
            counts = sorted({int(n) for n in rows["n"]})
            n_text = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
            ax.bar(x + (k - (len(order) - 1) / 2) * width, means, width, yerr=ses, capsize=2,
                   label=f"{algo} (n = {n_text})", color=colors[palette.index(algo) % len(colors)])
        ax.set_ylim(max(0.0, float(np.nanmin(part["mean"])) - 10), None)
        ax.set_xticks(x, [names[e] for e in envs])
        ax.set_xlabel("test domain")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{dataset}: every arm ({title}; {SE_NOTE})", fontsize=9)
        outside_legend(ax)
    fig.tight_layout()
    return fig


def plot_paired_gains(
    records: Records,
    selection: str = "training_domain",
    comparisons: Sequence[tuple[str, str]] = EVIDENCE_COMPARISONS,
    required: str = "all",
) -> plt.Figure:
    """Paired gain (points) per test domain and over the benchmark, with SE error bars.

    One panel per dataset; a comparison whose two arms never both ran on a dataset is left
    out of its panel (and named in the panel's note). ``required``: the domains a trial
    needs for the mean over domains, ``all`` of the dataset's or those ``run`` in the sweep
    (for sweeps that test only some domains, such as the demo).
    """
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
        missing = [c for c in dict.fromkeys(part["comparison"]) if c not in labels]
        x = np.arange(len(run_envs) + 1)
        width = 0.8 / max(len(labels), 1)
        for k, label in enumerate(labels):
            rows = part[part["comparison"] == label].set_index("test_env")
            keys = [*run_envs, AVERAGE]
            means = np.array([rows["mean"].get(e, np.nan) for e in keys], dtype=float)
            ses = np.nan_to_num(np.array([rows["se"].get(e, np.nan) for e in keys], dtype=float))
            n_avg = int(rows["n"].get(AVERAGE, 0))
            color = f"C{list(dict.fromkeys(gains['comparison'])).index(label) % 10}"  # same colour in every panel
            ax.errorbar(x + (k - (len(labels) - 1) / 2) * width, means, yerr=ses, fmt="o", capsize=3, color=color,
                        label=f"{label} (n = {n_avg} complete trials)")
        ax.set_xlim(-0.5, len(run_envs) + 0.5)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.axvline(len(run_envs) - 0.5, color="grey", lw=0.5, ls=":")
        ax.set_xticks(x, [names[e] for e in run_envs] + ["mean over\n" + ("domains" if required == "all" else "domains run")])
        ax.set_ylabel("paired gain (accuracy points)")
        ax.set_title(f"{dataset}: treatment − baseline ({title}; {SE_NOTE})", fontsize=9)
        if labels:
            outside_legend(ax)
        if missing:  # under the axis, where it cannot hide a point or the legend
            ax.set_xlabel("no paired trial yet: " + ", ".join(missing), fontsize=7)
    fig.tight_layout()
    return fig


def lambda_points(
    records: Records, selection: str = "training_domain", algorithm: str = "ERM_FTLP", key: str = "ftlp_lambda"
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
    records: Records | None, selection: str = "training_domain", algorithm: str = "ERM_FTLP",
    baseline: str = "ERM", key: str = "ftlp_lambda",
) -> plt.Figure:
    """Test accuracy of ``algorithm`` against the λ each random-search run drew (log x).

    ``baseline`` at the same hparams seed (same shared hparams: lr, batch size, weight
    decay) is drawn at the same x, hollow, joined to its pair by a line. Records without
    any ``algorithm`` run give a figure that says so.
    """
    df = _frame(records) if records is not None else pd.DataFrame()
    points = lambda_points(df, selection, algorithm, key) if not df.empty else pd.DataFrame()
    if points.empty:
        return _empty_figure(f"no hparam-search records yet ({algorithm} vs its sampled {key})")
    base = lambda_points(df, selection, baseline, key).drop(columns=[key])
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
