"""What ``evaluate`` measures of a model per domain, and how it shows it.

:func:`predict_batches` runs the model over ``(x, y)`` batches (with a progress bar) and
keeps logits and labels; :func:`domain_metrics` turns them into accuracy, per-class
accuracy, macro-F1, the confusion matrix, NLL and ECE with its reliability bins (all from
:mod:`domainbed.training.metrics`); :func:`format_table` and :func:`reliability_figure` present them.
"""

from __future__ import annotations

import math
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from domainbed.training import metrics


def predict_batches(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                    total: int | None = None, desc: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, labels)`` of the model over ``batches``, on the CPU."""
    from tqdm import tqdm

    logits, labels = [], []
    model.eval()
    with torch.inference_mode():
        for x, y in tqdm(batches, total=total, desc=desc, unit="batch", file=sys.stderr, leave=False,
                         disable=None, dynamic_ncols=True):
            logits.append(model(x.to(device)).float().cpu())
            labels.append(y.long().cpu())
    if not logits:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(labels)


def domain_metrics(logits: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
                   n_bins: int = metrics.DEFAULT_ECE_BINS) -> dict[str, Any]:
    """Every metric of one domain as JSON values (None where undefined)."""
    num_classes = len(class_names)
    if len(labels) == 0:
        return {"n": 0}
    probs = logits.softmax(1)
    matrix = metrics.confusion_matrix(labels, logits.argmax(1), num_classes)
    bins = metrics.calibration_bins(probs, labels, n_bins)
    return {
        "n": int(len(labels)),
        "accuracy": metrics.accuracy(matrix),
        "macro_f1": _json_float(metrics.macro_f1(matrix)),
        "nll": metrics.negative_log_likelihood(logits, labels),
        "ece": metrics.ece_from_bins(bins),
        "ece_bins": n_bins,
        "per_class_accuracy": dict(zip(class_names, metrics.per_class_accuracy(matrix))),
        "confusion_matrix": matrix,
        "reliability": metrics.reliability(bins),
    }


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else value


def _cell(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(results: dict[str, dict[str, Any]], class_names: Sequence[str], n_bins: int,
                 max_class_columns: int = 20) -> str:
    """Per-domain table (n, accuracy, macro-F1, NLL, ECE), then per-class accuracy when the
    classes fit on a line (all of them are in the JSON file)."""
    from domainbed.results.tables import format_grid

    header = ["Domain", "n", "Accuracy", "Macro-F1", "NLL", f"ECE ({n_bins} bins)"]
    body = [[name, str(r["n"]), _cell(r.get("accuracy")), _cell(r.get("macro_f1")), _cell(r.get("nll")),
             _cell(r.get("ece"))] for name, r in results.items()]
    parts = [format_grid(header, body)]
    if len(class_names) <= max_class_columns:
        rows = [[name, *(_cell(r.get("per_class_accuracy", {}).get(c), 3) for c in class_names)]
                for name, r in results.items()]
        parts.append("Per-class accuracy (recall):\n" + format_grid(["Domain", *class_names], rows))
    return "\n\n".join(parts)


def reliability_figure(results: dict[str, dict[str, Any]], path: Path, title: str = "") -> Path:
    """Reliability diagram per domain (accuracy per confidence bin against the diagonal), saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = {k: v for k, v in results.items() if v.get("n")}
    n = max(len(shown), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.8), squeeze=False)
    for ax, (name, r) in zip(axes[0], shown.items()):
        bins = r["reliability"]
        width = bins[0]["upper"] - bins[0]["lower"]
        lefts = [b["lower"] for b in bins if b["count"]]
        ax.bar(lefts, [b["accuracy"] for b in bins if b["count"]], width=width, align="edge",
               edgecolor="black", color="tab:blue", label="accuracy")
        ax.bar(lefts, [b["confidence"] - b["accuracy"] for b in bins if b["count"]], width=width, align="edge",
               bottom=[b["accuracy"] for b in bins if b["count"]], color="tab:red", alpha=0.3, label="gap")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", title=f"{name}\nECE {r['ece']:.3f} (n={r['n']})")
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(loc="upper left", fontsize=8)
    n_bins = next((r["ece_bins"] for r in shown.values()), metrics.DEFAULT_ECE_BINS)
    head = textwrap.fill(title, width=max(40, 48 * n)) + "\n" if title else ""  # a long model line wraps
    fig.suptitle(head + f"Reliability diagram, {n_bins} equal-width confidence bins", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
