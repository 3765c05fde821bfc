"""Helpers for notebooks: load a sweep, per-domain tables, FT-LP bars, training curves.

    from domainbed import model_selection
    from domainbed.results import plotting
    records = plotting.load_sweep("demo_sweep")
    plotting.per_domain_table(records, "training_domain")
    pairs = model_selection.paired_comparisons(records["algorithm"].unique())
    fig = plotting.plot_ftlp_bars(records, "training_domain", pairs=pairs)
    fig = plotting.plot_curves(records)          # accuracy and the task loss (loss_ce)
    fig = plotting.plot_kl_curve(records)        # the prior term, in its own panel

Every function takes the records frame of :func:`load_sweep` (or a ``RecordLoad``, or a
sweep path). Numbers come from the same selection and aggregation code as
``collect_results``, so a notebook never disagrees with the printed tables. Plot
functions return the matplotlib ``Figure``; assign it (``fig = ...``) in a notebook so
it is shown once.

Conventions shared by every figure here and in :mod:`domainbed.results.plotting_gains`:
error bars are the tables' standard error (accuracies: :data:`SE_NOTE`, DomainBed's
population std; paired gains: :data:`GAIN_SE_NOTE`, the sample std; a cell of one trial has
no error bar, and its n is written in the legend), bar axes start at 0, and a dataset given
by its folder path is titled by the folder's name (:func:`display_name`). Which algorithms
to pair is the caller's to say (the results package knows no algorithm).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import matplotlib

# Headless (CI, SSH): draw to memory. Notebooks set MPLBACKEND to their inline backend.
if not os.environ.get("MPLBACKEND") and not os.environ.get("DISPLAY") and "ipykernel" not in sys.modules:
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from domainbed.results.layout import sweep_layout  # noqa: E402
from domainbed.results.records import RecordLoad, load_records  # noqa: E402
from domainbed.results.selection import (  # noqa: E402
    get_selection_method,
    heldout_env_accuracy,
    prepare_records,
    training_domain_accuracy,
)
from domainbed.results.tables import Comparison, dataset_tables, per_domain_stats, table_cells  # noqa: E402

Records = pd.DataFrame | RecordLoad | str | os.PathLike

# The standard errors of domainbed.results.standard_error, as the tables beside the figures print them.
SE_NOTE = "mean ± SE over trials, SE = population std (ddof 0) / √n as in the tables; no error bar where n = 1"
GAIN_SE_NOTE = "mean ± SE over paired trials, SE = sample std (ddof 1) / √n as in the gain tables; no error bar where n = 1"

# What every algorithm logs as its task loss (cross-entropy), apart from any penalty or
# prior term: ``loss`` is the total that was minimised, so FT-LP's includes λ·KL.
TASK_LOSS = "loss_ce"
KEY_TITLES = {
    TASK_LOSS: "task loss (loss_ce, without any prior or penalty term)",
    "loss": "total loss (with any prior or penalty term)",
    "ftlp_kl": "prior term (ftlp_kl)",
}


def display_name(dataset: str) -> str:
    """A dataset's name for titles: a folder dataset (named by its path) by the folder's
    last component, so a title is not a long absolute path; registry names as they are."""
    if "/" in dataset or os.sep in dataset:
        return Path(dataset.rstrip("/" + os.sep)).name or dataset
    return dataset


def n_label(counts: Sequence[int]) -> str:
    """``n = 3``, or ``n = 1–3`` when the cells of one legend entry differ."""
    values = sorted({int(n) for n in counts})
    if not values:
        return "n = 0"
    return f"n = {values[0]}" if len(values) == 1 else f"n = {values[0]}–{values[-1]}"


def bars_with_se(
    axis: plt.Axes, x: np.ndarray, means: np.ndarray, ses: np.ndarray, counts: np.ndarray, width: float, **bar_kwargs
) -> None:
    """Bars of ``means`` and, only where a cell has n ≥ 2 trials, its ± SE error bar: with one
    trial the SE is 0 by convention, not an uncertainty, so no bar of zero width is drawn."""
    axis.bar(x, means, width, **bar_kwargs)
    spread = (np.asarray(counts, dtype=float) >= 2) & np.isfinite(means) & np.isfinite(ses)
    if spread.any():
        axis.errorbar(x[spread], means[spread], yerr=ses[spread], fmt="none", ecolor="black", elinewidth=1, capsize=3)


def outside_legend(axis: plt.Axes, fontsize: str = "x-small") -> None:
    """The legend to the right of the panel: bars from 0, or many arms, leave no free corner."""
    axis.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def start_at_zero(axis: plt.Axes) -> None:
    """Bars encode length: the y axis of a bar chart starts at 0 so no bar is cut off."""
    axis.set_ylim(0.0, None)


def load_sweep(path: str | os.PathLike[str], include_incomplete: bool = False, verbose: bool = True) -> pd.DataFrame:
    """All records of a sweep (see :mod:`domainbed.results.records`); prints what was skipped."""
    load = load_records(path, include_incomplete=include_incomplete)
    if verbose:
        print(load.summarise())
    load.df.attrs["summary"] = load.summarise()
    return load.df


def _frame(records: Records) -> pd.DataFrame:
    if isinstance(records, RecordLoad):
        return records.df
    if isinstance(records, (str, Path, os.PathLike)):
        return load_records(records).df
    return records


def _datasets(df: pd.DataFrame, dataset: str | None) -> list[str]:
    names = sorted(df["dataset"].unique())
    if dataset is None:
        return names
    if dataset not in names:
        raise ValueError(f"dataset {dataset!r} is not in these records; found: {', '.join(names) or 'none'}")
    return [dataset]


def per_domain_table(
    records: Records, selection: str = "training_domain", dataset: str | None = None, formatted: bool = True
) -> pd.DataFrame:
    """Test-domain accuracy per algorithm and domain under a selection rule.

    ``formatted=True``: index (dataset, algorithm), one column per domain plus Avg and n,
    cells ``mean ± SE`` in percent as in ``collect_results`` (X = missing; blank where a
    domain belongs to another dataset). ``formatted=False``: one row per (dataset,
    algorithm, test_env) with ``domain``, ``mean`` and ``se`` in percent and ``n``.
    """
    method = get_selection_method(selection)
    prepared = prepare_records(_frame(records))
    df = prepared.df
    keep = _datasets(df, dataset)
    df = df[df["dataset"].isin(keep)]
    prepared = prepare_records(df)
    selected = method.select(prepared)
    if not formatted:
        stats = per_domain_stats(selected)
        if stats.empty:
            return stats
        layout = sweep_layout(df)
        stats["domain"] = [layout.domain_names(d)[int(e)] for d, e in zip(stats["dataset"], stats["test_env"])]
        stats["mean"] = stats["mean"].astype(float) * 100
        stats["se"] = stats["se"].astype(float) * 100
        return stats[["dataset", "algorithm", "test_env", "domain", "mean", "se", "n"]]
    frames = []
    for table in dataset_tables(selected, method.name, method.title, sweep_layout(df)):
        header, body = table_cells(table, "markdown")
        frame = pd.DataFrame(body, columns=header).set_index("Algorithm")
        frame.index = pd.MultiIndex.from_product([[table.key.split("/", 1)[1]], frame.index], names=["dataset", "algorithm"])
        frames.append(frame)
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames).fillna("")


def _percent_stats(records: Records, selection: str, dataset: str) -> tuple[pd.DataFrame, list[str]]:
    df = prepare_records(_frame(records)).df
    df = df[df["dataset"] == dataset]
    stats = per_domain_stats(get_selection_method(selection).select(prepare_records(df)))
    return stats, list(sweep_layout(df).domain_names(dataset))


def _axes_per_dataset(datasets: list[str], ax: plt.Axes | None, ncols: int = 1, width: float = 6.0):
    """A figure with one row of ``ncols`` axes per dataset, or the caller's single axes."""
    if ax is not None:
        if len(datasets) > 1 or ncols > 1:
            raise ValueError("pass dataset=... (and one key) when drawing into a given ax; these records hold several")
        return ax.figure, np.array([[ax]])
    fig, axes = plt.subplots(len(datasets), ncols, figsize=(width * ncols, 3.6 * len(datasets)), squeeze=False)
    return fig, axes


def plot_ftlp_bars(
    records: Records, selection: str = "training_domain", dataset: str | None = None, ax: plt.Axes | None = None,
    pairs: Sequence[Comparison] | None = None,
) -> plt.Figure:
    """Bars of each baseline next to its treatment per domain, with SE error bars where a
    cell has two trials or more (:data:`SE_NOTE`); the legend gives each arm's n.

    ``pairs``: the (treatment, baseline) pairs to draw, e.g. each FT-LP variant and its base
    (:func:`domainbed.model_selection.paired_comparisons` of the algorithms present); an
    algorithm in several pairs is drawn once."""
    if pairs is None:
        raise ValueError(
            "plot_ftlp_bars needs pairs=[(treatment, baseline), ...], e.g. "
            "domainbed.model_selection.paired_comparisons(records['algorithm'].unique())"
        )
    df = _frame(records)
    datasets = _datasets(df, dataset)
    fig, axes = _axes_per_dataset(datasets, ax, width=9.0)
    title = get_selection_method(selection).title
    for name, axis in zip(datasets, axes[:, 0]):
        stats, domains = _percent_stats(df, selection, name)
        present = set(stats["algorithm"])
        algos = list(dict.fromkeys(a for t, b in pairs if {t, b} <= present for a in (b, t)))
        if not algos:
            axis.text(0.5, 0.5, f"{display_name(name)}: no pair of algorithms to compare in this sweep", ha="center",
                      va="center")
            axis.set_axis_off()
            continue
        # Only the test domains some drawn algorithm was run on (a sweep may leave domains out).
        run = sorted(int(e) for e in stats.loc[stats["algorithm"].isin(algos), "test_env"].unique())
        x = np.arange(len(run))
        width = 0.8 / len(algos)
        cmap = plt.get_cmap("tab20")
        for k, algo in enumerate(algos):
            part = stats[stats["algorithm"] == algo].set_index("test_env")
            means = np.array([100 * part["mean"].get(e, np.nan) for e in run], dtype=float)
            ses = np.array([100 * part["se"].get(e, np.nan) for e in run], dtype=float)
            counts = np.array([part["n"].get(e, 0) for e in run], dtype=float)
            # tab20 pairs a dark and a light shade: base light, FT-LP dark, same hue.
            color = cmap((k // 2) * 2 + (0 if k % 2 else 1))  # algos alternate base, variant
            label = f"{algo} ({n_label(part['n'])})"
            bars_with_se(axis, x + (k - (len(algos) - 1) / 2) * width, means, ses, counts, width, label=label, color=color)
        start_at_zero(axis)
        axis.set_xticks(x, [domains[e] for e in run])
        axis.set_xlabel("test domain")
        axis.set_ylabel("test accuracy (%)")
        axis.set_title(f"{display_name(name)}: base vs FT-LP ({title})\n{SE_NOTE}", fontsize=9)
        outside_legend(axis, "small")
    fig.tight_layout()
    return fig


def _ordinary(df: pd.DataFrame, dataset: str, algorithms: Sequence[str] | None, test_env: int | None) -> pd.DataFrame:
    """Ordinary checkpoints (no averaged-model records) of single-test-env runs."""
    part = df[(df["dataset"] == dataset) & ~df["averaged"] & (df["n_test_envs"] == 1)]
    if algorithms is not None:
        part = part[part["algorithm"].isin(algorithms)]
    if test_env is not None:
        part = part[part["test_env"] == test_env]
    return part


SYMLOG_LINTHRESH = 1.0


def set_value_scale(axis: plt.Axes, values: np.ndarray, name: str, scale: str = "auto") -> str:
    """Set ``axis``'s y scale for logged ``values`` and label it with what is drawn.

    ``auto``: ``log`` when every value is positive, else ``symlog`` (linear within
    ±SYMLOG_LINTHRESH, logarithmic beyond), since prior terms can be negative (MIRO's
    log-variance term is about −5.8 at step 0) while others reach thousands. Returns the scale.
    """
    finite = values[np.isfinite(values)]
    if scale == "auto":
        scale = "log" if finite.size and (finite > 0).all() else "symlog"
    if scale == "symlog":
        axis.set_yscale("symlog", linthresh=SYMLOG_LINTHRESH)
        axis.set_ylabel(f"{name} (symlog: linear within ±{SYMLOG_LINTHRESH:g}, log beyond)")
    elif scale == "log":
        axis.set_yscale("log")
        axis.set_ylabel(f"{name} (log scale)")
    elif scale == "linear":
        axis.set_ylabel(name)
    else:
        raise ValueError(f"scale must be auto, log, symlog or linear; got {scale!r}")
    return scale


def _finish_value_axis(axis: plt.Axes, key: str, scale: str, empty: str, legend_size: str) -> None:
    """Scale and label an axis of logged values from the lines drawn on it, or say ``empty``."""
    if axis.lines:
        set_value_scale(axis, np.concatenate([line.get_ydata() for line in axis.lines]).astype(float), key, scale)
        axis.legend(fontsize=legend_size)
    else:
        axis.text(0.5, 0.5, empty, ha="center", va="center", transform=axis.transAxes)


def plot_curves(
    records: Records,
    keys: Sequence[str] = (TASK_LOSS,),
    dataset: str | None = None,
    algorithms: Sequence[str] | None = None,
    test_env: int | None = None,
    scale: str = "auto",
) -> plt.Figure:
    """Accuracy and loss curves over steps, mean over runs, one row of panels per dataset.

    Left panel: test-env ``in`` accuracy (solid) and training-domain validation accuracy
    (dashed). Then one panel per key in ``keys`` (any logged column), on the y scale of
    :func:`set_value_scale` (``scale``; ``auto``: log, or symlog for negatives). The default
    compares the task loss only (:data:`TASK_LOSS`): ``loss`` is the minimised total, which
    for FT-LP and MIRO includes the prior term; draw that with :func:`plot_kl_curve`.
    Only single-test-env runs and ordinary checkpoints are drawn.
    """
    df = _frame(records)
    datasets = _datasets(df, dataset)
    fig, axes = _axes_per_dataset(datasets, None, ncols=1 + len(keys), width=5.0)
    for row, name in zip(axes, datasets):
        part = _ordinary(df, name, algorithms, test_env)
        part = part.assign(test_acc=100 * heldout_env_accuracy(part), train_val_acc=100 * training_domain_accuracy(part))
        colors = dict(zip(sorted(part["algorithm"].unique()), plt.get_cmap("tab10").colors * 10))
        for algo, runs in part.groupby("algorithm"):
            curve = runs.groupby("step")[["test_acc", "train_val_acc"]].mean()
            row[0].plot(curve.index, curve["test_acc"], "-", color=colors[algo], label=f"{algo} test")
            row[0].plot(curve.index, curve["train_val_acc"], "--", color=colors[algo], label=f"{algo} train-dom. val")
            for axis, key in zip(row[1:], keys):
                if key in runs.columns and runs[key].notna().any():
                    loss = runs.groupby("step")[key].mean()
                    axis.plot(loss.index, loss.to_numpy(dtype=float), color=colors[algo], label=algo)
        row[0].set_title(f"{display_name(name)}: accuracy (mean over runs)")
        row[0].set_xlabel("step")
        row[0].set_ylabel("accuracy (%)")
        row[0].legend(fontsize="x-small")
        for axis, key in zip(row[1:], keys):
            axis.set_title(f"{display_name(name)}: {KEY_TITLES.get(key, key)}", fontsize=9)
            axis.set_xlabel("step")
            _finish_value_axis(axis, key, scale, f"no '{key}' logged", "x-small")
    fig.tight_layout()
    return fig


def plot_kl_curve(
    records: Records, dataset: str | None = None, ax: plt.Axes | None = None, key: str = "ftlp_kl",
    scale: str = "symlog",
) -> plt.Figure:
    """The prior term (``ftlp_kl``: FT-LP's KL, MIRO's regulariser) over steps, mean over runs,
    per dataset and algorithm, on a symlog y axis by default (MIRO's term is negative; see
    :func:`set_value_scale`)."""
    df = _frame(records)
    datasets = _datasets(df, dataset)
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.6))
    fig = ax.figure
    if key in df.columns:
        for name in datasets:
            part = _ordinary(df, name, None, None)
            for algo, runs in part.groupby("algorithm"):
                if runs[key].notna().any():
                    curve = runs.groupby("step")[key].mean()
                    label = algo if len(datasets) == 1 else f"{display_name(name)}/{algo}"
                    ax.plot(curve.index, curve.to_numpy(dtype=float), label=label)
    ax.set_title(f"{KEY_TITLES.get(key, key)} (mean over runs)")
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    _finish_value_axis(ax, key, scale, f"no '{key}' logged in these records", "small")
    fig.tight_layout()
    return fig
