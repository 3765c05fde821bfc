"""Accuracy and loss of a network on a loader, under ``inference_mode`` with a large batch."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader


def evaluate(
    network: nn.Module, loader: DataLoader, device: torch.device, amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``network.predict`` over ``loader``.

    Sums stay on the device; one host read at the end.
    """
    was_training = network.training
    network.eval()
    correct = torch.zeros((), device=device)
    loss_sum = torch.zeros((), device=device)
    total = 0
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            logits = network.predict(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            total += len(y)
    network.train(was_training)
    if total == 0:
        return float("nan"), float("nan")
    return (correct / total).item(), (loss_sum / total).item()
