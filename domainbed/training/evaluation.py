"""Accuracy and loss of a network on a loader, under ``inference_mode`` with a large batch.

How inputs reach the network (device, memory format, any preprocessing on the device)
and in which precision it runs are the algorithm's business: an
:class:`~domainbed.algorithms.base.Algorithm` says so with ``prepare_input(x)`` and
``autocast()``, and evaluation calls those methods rather than repeating them. A bare
module without them (SWAD's averaged predictor) is evaluated with the methods of the
algorithm that produced it, passed as ``inputs``; with no ``inputs`` at all it runs in
fp32 on the device of its parameters, as any plain module would.

:func:`evaluate_split` also returns the expected calibration error of the same pass
(:mod:`domainbed.training.metrics`); :func:`evaluate` is its accuracy and loss.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager, Iterable, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from domainbed.training.metrics import DEFAULT_ECE_BINS, CalibrationBins, calibration_bins, ece_from_bins


@runtime_checkable
class InputPolicy(Protocol):
    """What :func:`evaluate` needs to feed a network: the Algorithm interface's two methods."""

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor: ...

    def autocast(self) -> ContextManager: ...


class _PlainModule:
    """A module with no input path of its own: inputs to its device, no autocast."""

    def __init__(self, network: nn.Module):
        param = next(network.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True)

    def autocast(self) -> ContextManager:
        return contextlib.nullcontext()


@dataclass(frozen=True)
class SplitMetrics:
    """What one pass over a split measures: accuracy, mean cross-entropy (NLL, nats) and ECE."""

    acc: float
    nll: float
    ece: float


def evaluate(
    network: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    inputs: InputPolicy | None = None,
) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``network.predict`` over ``loader`` (:func:`evaluate_split`)."""
    metrics = evaluate_split(network, loader, inputs=inputs)
    return metrics.acc, metrics.nll


def evaluate_split(
    network: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    inputs: InputPolicy | None = None,
    ece_bins: int = DEFAULT_ECE_BINS,
) -> SplitMetrics:
    """Accuracy, mean cross-entropy and ECE (``ece_bins`` equal-width bins) of ``network.predict`` over ``loader``.

    Inputs go through ``inputs.prepare_input`` and the forward runs in ``inputs.autocast()``;
    ``inputs`` defaults to ``network`` itself when it has those methods (an Algorithm), else
    to a plain fp32 path on the network's device. Labels go to the device of the prepared
    inputs. Sums stay on the device; one host read at the end.
    """
    if inputs is not None:
        policy: InputPolicy = inputs
    elif isinstance(network, InputPolicy):
        policy = network
    else:
        policy = _PlainModule(network)
    was_training = network.training
    network.eval()
    correct: torch.Tensor | None = None
    loss_sum: torch.Tensor | None = None
    bins: CalibrationBins | None = None
    total = 0
    with torch.inference_mode(), policy.autocast():
        for x, y in loader:
            x = policy.prepare_input(x)
            y = y.to(x.device, non_blocking=True)
            logits = network.predict(x).float()
            batch_loss = F.cross_entropy(logits, y, reduction="sum")
            batch_correct = (logits.argmax(1) == y).sum()
            batch_bins = calibration_bins(logits.softmax(1), y, ece_bins)
            loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
            correct = batch_correct if correct is None else correct + batch_correct
            bins = batch_bins if bins is None else bins + batch_bins
            total += len(y)
    network.train(was_training)
    if total == 0 or correct is None or loss_sum is None or bins is None:
        return SplitMetrics(float("nan"), float("nan"), float("nan"))
    return SplitMetrics((correct / total).item(), (loss_sum / total).item(), ece_from_bins(bins))
