"""domainbed.training.metrics against hand counts, and evaluate_split's calibration against them."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from domainbed.training import metrics
from domainbed.training.evaluation import evaluate_split


def ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = metrics.DEFAULT_ECE_BINS) -> float:
    """The ECE of one batch of predictions, as the evaluation computes it over a loader."""
    return metrics.ece_from_bins(metrics.calibration_bins(probs, labels, n_bins))


def test_ece_on_a_hand_made_example() -> None:
    # Confidences 0.9 (right), 0.78 (wrong), 0.55 (right), 0.7 (right); 5 bins of width 0.2.
    probs = torch.tensor([[0.9, 0.1], [0.78, 0.22], [0.55, 0.45], [0.3, 0.7]])
    labels = torch.tensor([0, 1, 0, 1])
    # Bin (0.4, 0.6]: {0.55}, acc 1, conf 0.55 -> 1/4 * 0.45
    # Bin (0.6, 0.8]: {0.78, 0.7}, acc 0.5, conf 0.74 -> 2/4 * 0.24
    # Bin (0.8, 1.0]: {0.9}, acc 1, conf 0.9 -> 1/4 * 0.1
    by_hand = 0.25 * 0.45 + 0.5 * 0.24 + 0.25 * 0.1
    assert ece(probs, labels, n_bins=5) == pytest.approx(by_hand, abs=1e-6)
    bins = metrics.reliability(metrics.calibration_bins(probs, labels, 5))
    assert [b["count"] for b in bins] == [0, 0, 1, 2, 1]
    assert bins[3]["accuracy"] == 0.5 and bins[3]["confidence"] == pytest.approx(0.74)
    assert bins[0]["accuracy"] is None
    # One bin: |overall accuracy - mean confidence|.
    assert ece(probs, labels, n_bins=1) == pytest.approx(abs(0.75 - 0.7325), abs=1e-6)


def test_ece_matches_a_loop_over_bins_with_the_default_15() -> None:
    torch.manual_seed(0)
    probs = torch.randn(500, 4).mul(2).softmax(1)
    labels = torch.randint(0, 4, (500,))
    conf, pred = probs.max(1)
    total = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        inside = [(c, p == y) for c, p, y in zip(conf.tolist(), pred.tolist(), labels.tolist()) if lo < c <= hi]
        if inside:
            acc = sum(ok for _, ok in inside) / len(inside)
            mean_conf = sum(c for c, _ in inside) / len(inside)
            total += len(inside) / 500 * abs(acc - mean_conf)
    assert ece(probs, labels) == pytest.approx(total, abs=1e-6)


def test_macro_f1_confusion_matrix_and_per_class_accuracy_by_hand() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 1, 1, 1, 0])
    matrix = metrics.confusion_matrix(labels, predicted, 3)
    assert matrix == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    # F1 = 2TP / (2TP + FP + FN): class 0: 2/(2+1+1); class 1: 4/(4+1+0); class 2: 0/(0+0+1).
    assert metrics.macro_f1(matrix) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert metrics.per_class_accuracy(matrix) == [0.5, 1.0, 0.0]
    assert metrics.accuracy(matrix) == pytest.approx(3 / 5)
    # A class that never occurs and is never predicted has no F1 and is left out.
    assert metrics.macro_f1(metrics.confusion_matrix(labels, predicted, 4)) == pytest.approx((0.5 + 0.8) / 3)
    assert metrics.per_class_accuracy(metrics.confusion_matrix(labels, predicted, 4))[3] is None


def test_nll_is_minus_log_p_of_the_label() -> None:
    p = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.7, 0.1]])
    logits = p.log() + 3.0  # softmax ignores a constant shift
    by_hand = (-math.log(0.25) - math.log(0.7)) / 2
    assert metrics.negative_log_likelihood(logits, torch.tensor([1, 1])) == pytest.approx(by_hand, rel=1e-6)
    assert math.isnan(metrics.negative_log_likelihood(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)))


class _Fixed(torch.nn.Module):
    """A 'network' whose logits are its input."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.w


def test_evaluate_split_sums_calibration_over_batches() -> None:
    torch.manual_seed(1)
    logits, labels = torch.randn(37, 5) * 3, torch.randint(0, 5, (37,))
    split = evaluate_split(_Fixed(), DataLoader(TensorDataset(logits, labels), batch_size=8))
    assert split.ece == pytest.approx(ece(logits.softmax(1), labels), abs=1e-6)
    assert split.nll == pytest.approx(metrics.negative_log_likelihood(logits, labels), rel=1e-6)
    assert split.acc == pytest.approx((logits.argmax(1) == labels).float().mean().item())
