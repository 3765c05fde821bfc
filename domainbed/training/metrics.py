"""Classification metrics as plain functions: accuracy per class, macro-F1, the confusion
matrix, negative log-likelihood and the expected calibration error (ECE).

Every function takes tensors (any device) and returns plain Python numbers or lists, so
it can be used outside the trainer and checked against a count by hand. ECE is computed
from per-bin sums (:func:`calibration_bins`), which add over batches: a loop over a
loader keeps three small tensors on the device and reads them once at the end.

ECE (Naeini et al. 2015; Guo et al. 2017): the top-1 confidences are put into ``n_bins``
equal-width bins over [0, 1] (bin b holds confidences in ``(b/n, (b+1)/n]``, the first bin
also holds 0); ECE = Σ_b (|B_b| / N) · |accuracy(B_b) − mean confidence(B_b)|.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_ECE_BINS = 15  # the usual choice since Guo et al. (2017)


@dataclass(frozen=True)
class CalibrationBins:
    """Per-bin sums of a set of predictions: example count, confidence sum and correct count."""

    count: torch.Tensor
    confidence: torch.Tensor
    correct: torch.Tensor

    def __add__(self, other: "CalibrationBins") -> "CalibrationBins":
        return CalibrationBins(self.count + other.count, self.confidence + other.confidence, self.correct + other.correct)

    @property
    def n_bins(self) -> int:
        return int(self.count.numel())


def calibration_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = DEFAULT_ECE_BINS) -> CalibrationBins:
    """Sums per equal-width confidence bin of ``probs`` (``(N, C)``, rows summing to 1)
    against integer ``labels`` (``(N,)``); the tensors stay on ``probs``' device."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}")
    confidence, predicted = probs.float().max(dim=1)
    correct = (predicted == labels.to(predicted.device)).float()
    # Right-closed bins: ceil(c * n) - 1, so a confidence of exactly b/n falls in bin b-1.
    index = (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)
    zeros = torch.zeros(n_bins, device=probs.device)
    return CalibrationBins(
        zeros.index_add(0, index, torch.ones_like(confidence)),
        zeros.index_add(0, index, confidence),
        zeros.index_add(0, index, correct),
    )


def ece_from_bins(bins: CalibrationBins) -> float:
    """Expected calibration error of the predictions summed in ``bins`` (NaN when empty)."""
    total = float(bins.count.sum())
    if total == 0:
        return float("nan")
    gap = (bins.correct - bins.confidence).abs()  # = count · |acc − conf| per bin
    return float(gap.sum()) / total


def reliability(bins: CalibrationBins) -> list[dict[str, float | int | None]]:
    """One entry per bin for a reliability diagram: its edges, count, accuracy and mean
    confidence (None for an empty bin)."""
    n = bins.n_bins
    out = []
    for b, (count, conf, corr) in enumerate(zip(bins.count.tolist(), bins.confidence.tolist(), bins.correct.tolist())):
        c = int(round(count))
        out.append({"lower": b / n, "upper": (b + 1) / n, "count": c,
                    "accuracy": corr / count if c else None, "confidence": conf / count if c else None})
    return out


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean −log p(label) under softmax(``logits``), in nats (NaN for no examples)."""
    if len(labels) == 0:
        return float("nan")
    return float(F.cross_entropy(logits.float(), labels.to(logits.device), reduction="mean"))


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> list[list[int]]:
    """``m[i][j]`` = number of examples of true class i predicted as class j."""
    flat = labels.long().cpu() * num_classes + predicted.long().cpu()
    counts = torch.bincount(flat, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes).tolist()


def per_class_accuracy(matrix: list[list[int]]) -> list[float | None]:
    """Recall of each class from a confusion matrix (None for a class with no examples)."""
    return [row[i] / sum(row) if sum(row) else None for i, row in enumerate(matrix)]


def macro_f1(matrix: list[list[int]]) -> float:
    """Unweighted mean over classes of F1 = 2·TP / (2·TP + FP + FN).

    Classes that never occur and are never predicted (TP + FP + FN = 0) are left out, as
    they have no F1; NaN when no class is left.
    """
    n = len(matrix)
    scores = []
    for i in range(n):
        tp = matrix[i][i]
        fn = sum(matrix[i]) - tp
        fp = sum(matrix[r][i] for r in range(n)) - tp
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else math.nan


def accuracy(matrix: list[list[int]]) -> float:
    """Fraction of examples on the diagonal of a confusion matrix (NaN for none)."""
    total = sum(sum(row) for row in matrix)
    return sum(matrix[i][i] for i in range(len(matrix))) / total if total else math.nan
