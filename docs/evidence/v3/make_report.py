"""Build the evidence v3 report (the regime map) from committed records and probe files.

    python docs/evidence/v3/make_report.py [--out DIR]

Run from the repository root. Reads:

* ``docs/evidence/v3/records``: the jobs of ``run_map.sh`` (64 and 128 px, frozen BatchNorm;
  MIRO with its variance started at the prior's at 32 px);
* ``docs/evidence/v2/records``: the 32 px cells (ERM, ERM_FTLP, the shuffled-prior control,
  MIRO as published; batch statistics), restricted to the two test domains of the map;
* ``docs/evidence/v3/pilot``: ERM's learning curves (``run_pilot.sh``);
* ``docs/evidence/v3/probe/*.json``: ``probe_prior``'s held-out accuracy and feature scales;
* ``docs/evidence/v3/drift.jsonl``, when present: ``feature_drift``'s per-job CKA and distance
  from the prior on the test domain (map.md's feature-drift table; without it, no table).

Writes into ``--out`` (default docs/evidence/v3): ``map.md`` (per cell: the probe's held-out
accuracy, each arm's test accuracy, each comparison's paired gain with its 95 % interval,
n and reading, under training-domain validation and the oracle; the MIRO scale table; the
compute), ``regime_map.png`` (gain against the probe's accuracy, one point per cell with
its interval) and ``pilot_curves.png``.

A *cell* is (dataset, image size); an *arm* is an algorithm with the hparams that make it a
variant (``MIRO[var=prior]``: ``miro_var_init = prior``; ``ERM_FTLP[λ=…]``: an
``ftlp_lambda`` fixed by the sweep). Gains are paired over trials (a trial's seed does not
depend on the arm), in points, mean ± SE with SE = sample std / √n and a Student-t
interval (:mod:`domainbed.results.paired_gains`); an arm's accuracy is mean ± SE with
DomainBed's SE, population std / √n (:func:`domainbed.results.tables.arm_accuracy`), shown
from two trials on.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

from domainbed.model_selection import get_selection_method, prepare_records  # noqa: E402
from domainbed.results.paired_gains import (  # noqa: E402
    AVERAGE,
    confidence_interval,
    format_gain,
    paired_gains,
    reading,
)
from domainbed.results.records import load_records  # noqa: E402
from domainbed.results.tables import arm_accuracy  # noqa: E402

RECORDS = HERE / "records"
V2_RECORDS = HERE.parent / "v2" / "records"
PILOT = HERE / "pilot"
PROBE = HERE / "probe"
DRIFT = HERE / "drift.jsonl"  # domainbed.scripts.feature_drift over the records' jobs
TEST_ENV = {"OfflineDigits": 1, "RotatedMNISTSubset": 5}  # mnist_m, 75 degrees
V2_ARMS = ("ERM", "ERM_FTLP", "ERM_FTLP_ShuffledPrior", "MIRO")
COMPARISONS = (
    ("ERM_FTLP", "ERM"),
    ("ERM_FTLP", "ERM_FTLP_ShuffledPrior"),
    ("MIRO", "ERM"),
    ("MIRO[var=prior]", "ERM"),
    ("ERM_FTLP", "MIRO[var=prior]"),
    ("ERM_FTLP[λ=0.01]", "ERM"),
    ("ERM_FTLP[λ=1.0]", "ERM"),
)
SELECTIONS = ("training_domain", "oracle")
MIRO_PUBLISHED_VAR = 0.1


def arm_name(row: pd.Series) -> str:
    """The algorithm, with the hparams that make it a variant of the map."""
    fixed = json.loads(row["args"].get("hparams") or "{}")
    name = row["algorithm"]
    if fixed.get("miro_var_init") == "prior":
        name += "[var=prior]"
    if "ftlp_lambda" in fixed:
        name += f"[λ={fixed['ftlp_lambda']}]"
    return name


def cell_name(dataset: str, size: int) -> str:
    return f"{dataset} {size}px"


def load_cells() -> pd.DataFrame:
    """Every finished job's records, ``dataset`` relabelled by cell and ``algorithm`` by arm."""
    frames = []
    for folder, v2 in ((RECORDS, False), (V2_RECORDS, True)):
        if not folder.exists():
            continue
        df = load_records(folder).df
        if df.empty:
            continue
        wanted = [list(t) == [TEST_ENV.get(d, -1)] for d, t in zip(df["dataset"], df["test_envs"])]
        df = df[wanted]
        if v2:
            df = df[df["algorithm"].isin(V2_ARMS)]
        df = df.assign(source="v2" if v2 else "v3")
        if not df.empty:
            frames.append(df)
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    df["algorithm"] = df.apply(arm_name, axis=1)
    df["dataset"] = [cell_name(d, int(h["image_size"])) for d, h in zip(df["dataset"], df["hparams"])]
    return df


def probe_accuracy(dataset: str, size: int) -> float:
    """The probe's held-out accuracy (%) of the map's test domain, in the BatchNorm mode the
    cell trains with (batch statistics at 32 px, frozen above)."""
    mode = "batch" if size == 32 else "frozen"
    path = PROBE / f"{dataset}_efficientnet_lite0_{size}px_bn-{mode}.json"
    data = json.loads(path.read_text())
    return 100.0 * next(d["probe_acc"] for d in data["domains"] if d["index"] == TEST_ENV[dataset])


def gains_table(records: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Paired gains and arm accuracies of every cell under both selection rules."""
    prepared = prepare_records(records)
    domains = {cell: [TEST_ENV[cell.split()[0]]] for cell in sorted(set(records["dataset"]))}
    gains, arms = [], []
    for rule in SELECTIONS:
        selected = get_selection_method(rule).select(prepared)
        g = paired_gains(selected, COMPARISONS, domains)
        g = g[(g["test_env"] != AVERAGE) & (g["n"] > 0)].assign(selection=rule)
        gains.append(g)
        arms.append(arm_accuracy(selected).assign(selection=rule))
    return pd.concat(gains, ignore_index=True), pd.concat(arms, ignore_index=True)


def markdown(gains: pd.DataFrame, arms: pd.DataFrame, records: pd.DataFrame) -> str:
    lines = ["# Evidence v3: the regime map (generated by make_report.py; do not edit)", ""]
    lines += ["Paired gains in accuracy points on the cell's test domain, mean ± SE (SE = sample std / √n), "
              "95 % Student-t interval, n paired trials. Probe: `probe_prior`'s held-out accuracy of the "
              "test domain (linear probe on the frozen prior's pooled features). Arm accuracies: mean ± SE over "
              "trials, SE = population std / √n (DomainBed's convention), none for n = 1.", ""]
    for rule in SELECTIONS:
        lines += [f"## {rule.replace('_', '-')} selection", "",
                  "| cell | probe % | comparison | gain | 95 % interval | n | reading |", "|---|---|---|---|---|---|---|"]
        part = gains[gains["selection"] == rule]
        for _, g in part.iterrows():
            dataset, size = g["dataset"].split()[0], int(g["dataset"].split()[1][:-2])
            low, high = confidence_interval(g["mean"], g["se"], g["n"])
            interval = "–" if math.isnan(low) else f"[{low:+.1f}, {high:+.1f}]"
            lines.append(f"| {g['dataset']} | {probe_accuracy(dataset, size):.1f} | {g['comparison']} | "
                         f"{format_gain(g['mean'], g['se'], g['n'])} | {interval} | {g['n']} | "
                         f"{reading(g['mean'], g['se'], g['n'])} |")
        lines += ["", "| cell | arm | test accuracy % | n |", "|---|---|---|---|"]
        for _, a in arms[arms["selection"] == rule].iterrows():
            se = "" if a["n"] < 2 else f" ± {a['se']:.1f}"
            lines.append(f"| {a['dataset']} | {a['algorithm']} | {a['mean']:.1f}{se} | {a['n']} |")
        lines.append("")
    lines += drift_lines(records)
    lines += miro_scale_lines()
    own = records[records["source"] == "v3"]
    lines += ["## Compute", "",
              f"{records['output_dir'].nunique()} finished jobs in these cells; the sum of their per-step times "
              f"over the checkpoints' intervals is a lower bound of their training time: {training_hours(records):.1f} h "
              f"of one thread, of which evidence v3's own {own['output_dir'].nunique()} jobs: "
              f"{training_hours(own):.1f} h (the rest are evidence v2's 32 px records).", ""]
    return "\n".join(lines)


def training_hours(records: pd.DataFrame) -> float:
    """Sum over jobs of each record's mean seconds per step times the steps since the job's
    previous record (evaluation and start-up not counted: a lower bound)."""
    if "step_time" not in records:
        return 0.0
    total = 0.0
    for _, job in records.drop_duplicates(["output_dir", "step"]).groupby("output_dir"):
        steps = job["step"].sort_values()
        intervals = steps.diff().fillna(steps.iloc[0] + 1)
        total += float((job.set_index("step").loc[steps, "step_time"].to_numpy() * intervals.to_numpy()).sum())
    return total / 3600


def drift_lines(records: pd.DataFrame) -> list[str]:
    """Per cell and arm, how far the final features moved from the prior's on the test domain
    (``drift.jsonl``, one line per job, joined to the records by job folder); nothing without it."""
    if not DRIFT.exists():
        return []
    drift = pd.DataFrame([json.loads(line) for line in DRIFT.read_text().splitlines() if line.strip()])
    jobs = records.groupby("output_dir")[["dataset", "algorithm"]].first()
    jobs.index, jobs.columns = [Path(d).name for d in jobs.index], ["cell", "arm"]
    if drift.empty:
        return []
    drift = drift.join(jobs, on="job", how="inner")
    if drift.empty:
        return []
    lines = ["## Feature drift on the held-out domain", "",
             "Each job's final pooled features against the frozen prior's on the cell's test domain (all its "
             "images, a seeded subset of 2,000 above that; BatchNorm as the job trained; "
             "`python -m domainbed.scripts.feature_drift`): linear CKA (1: the prior's features up to a rotation "
             "and scale), mean ± SE over jobs (SE = sample std / √n); the mean squared distance per image (summed "
             "over feature dimensions); and that distance over the prior's own spread on the same images (1: as far "
             "as the prior's features lie from their mean).", "",
             "| cell | arm | CKA | MSD | MSD ÷ prior spread | n |", "|---|---|---|---|---|---|"]
    drift["relative"] = drift["msd"] / drift["prior_spread"]
    order = sorted(drift.groupby(["cell", "arm"]).groups,
                   key=lambda k: (k[0].split()[0], int(k[0].split()[1][:-2]), k[1]))
    for cell, arm in order:
        part = drift[(drift["cell"] == cell) & (drift["arm"] == arm)]
        n = len(part)
        se = part["cka"].std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
        cka = f"{part['cka'].mean():.3f}" + ("" if math.isnan(se) else f" ± {se:.3f}")
        lines.append(f"| {cell} | {arm} | {cka} | {part['msd'].mean():.1f} | {part['relative'].mean():.2f} | {n} |")
    return lines + [""]


def miro_scale_lines() -> list[str]:
    """MIRO's published start variance against the prior's per-channel feature variances."""
    lines = ["## MIRO's scale", "",
             f"MIRO starts every per-channel variance at {MIRO_PUBLISHED_VAR}. The prior's per-channel feature "
             "variances of the layers it regularises (probe, frozen BatchNorm unless noted):", "",
             "| dataset | size | BatchNorm | layer | per-channel variance: min – max (mean) | mean ÷ 0.1 |",
             "|---|---|---|---|---|---|"]
    for path in sorted(PROBE.glob("*.json")):
        data = json.loads(path.read_text())
        for layer in data["layers"]:
            if layer["name"] == "final":
                continue
            lines.append(f"| {data['dataset']} | {data['image_size']} | {data['bn_mode']} | {layer['name']} | "
                         f"{layer['var_min']:.3g} – {layer['var_max']:.3g} ({layer['var_mean']:.3g}) | "
                         f"{layer['var_mean'] / MIRO_PUBLISHED_VAR:.0f}× |")
    return lines + [""]


def plot_map(gains: pd.DataFrame, out: Path) -> None:
    """Gain against the probe's accuracy: one point per cell and comparison, with its interval."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    shown = ("ERM_FTLP − ERM", "ERM_FTLP − ERM_FTLP_ShuffledPrior")
    for ax, rule in zip(axes, SELECTIONS):
        part = gains[(gains["selection"] == rule) & gains["comparison"].isin(shown)]
        for k, (comparison, rows) in enumerate(part.groupby("comparison")):
            xs, ys, errs = [], [], []
            for _, g in rows.iterrows():
                dataset, size = g["dataset"].split()[0], int(g["dataset"].split()[1][:-2])
                low, high = confidence_interval(g["mean"], g["se"], g["n"])
                xs.append(probe_accuracy(dataset, size) + 0.8 * k)
                ys.append(g["mean"])
                errs.append(0.0 if math.isnan(low) else (high - low) / 2)
                ax.annotate(f"{g['dataset']} (n={g['n']})", (xs[-1], ys[-1]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
            ax.errorbar(xs, ys, yerr=errs, fmt="o", capsize=3, label=comparison)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{rule.replace('_', '-')} selection")
        ax.set_xlabel("probe: held-out accuracy of the test domain (%)")
    axes[0].set_ylabel("paired gain (points), 95 % t-interval")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_pilot(out: Path) -> None:
    """ERM's training-domain validation and test accuracy against steps, per regime."""
    # include_incomplete: a pilot stopped early still draws its curve up to its last checkpoint
    df = load_records(PILOT, include_incomplete=True).df if PILOT.exists() else pd.DataFrame()
    if df.empty:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, dataset in zip(axes, sorted(TEST_ENV)):
        for _, run in df[df["dataset"] == dataset].groupby("output_dir"):
            run = run.sort_values("step")
            h = run["hparams"].iloc[0]
            test = TEST_ENV[dataset]
            train = [i for i in range(10) if f"env{i}_out_acc" in run and i != test and run[f"env{i}_out_acc"].notna().all()]
            val = run[[f"env{i}_out_acc" for i in train]].mean(axis=1) * 100
            label = f"{h['image_size']} px, lr {h['lr']:g}"
            line, = ax.plot(run["step"], val, label=f"{label}: validation")
            ax.plot(run["step"], run[f"env{test}_in_acc"] * 100, ls="--", color=line.get_color(), label=f"{label}: test")
        ax.set_title(f"ERM, {dataset} (test domain env {TEST_ENV[dataset]})")
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=HERE)
    args = p.parse_args(argv)
    plot_pilot(args.out / "pilot_curves.png")
    records = load_cells()
    if records.empty:
        print("no finished map jobs yet; wrote the pilot curves only")
        return
    gains, arms = gains_table(records)
    (args.out / "map.md").write_text(markdown(gains, arms, records))
    plot_map(gains, args.out / "regime_map.png")
    print(f"wrote {args.out / 'map.md'}, regime_map.png, pilot_curves.png")


if __name__ == "__main__":
    main()
