"""Accuracy and loss of a network on a loader, under ``inference_mode`` with a large batch.

How inputs reach the network (device, memory format, any preprocessing on the device)
and in which precision it runs are the algorithm's business: an
:class:`~domainbed.algorithms.base.Algorithm` says so with ``prepare_input(x)`` and
``autocast()``, and evaluation calls those methods rather than repeating them. A bare
module without them (SWAD's averaged predictor) is evaluated with the methods of the
algorithm that produced it, passed as ``inputs``.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader


@runtime_checkable
class InputPolicy(Protocol):
    """What :func:`evaluate` needs to feed a network: the Algorithm interface's two methods."""

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor: ...

    def autocast(self) -> ContextManager: ...


class _LegacyInputs:
    """Inputs as described by the older arguments of :func:`evaluate` (device, dtype, layout)."""

    def __init__(self, device: torch.device, amp_dtype: torch.dtype | None, channels_last: bool):
        self.device, self.amp_dtype, self.channels_last = device, amp_dtype, channels_last

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self) -> ContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def _input_policy(
    network: nn.Module, inputs: InputPolicy | None, device: torch.device | None,
    amp_dtype: torch.dtype | None, channels_last: bool,
) -> InputPolicy:
    if inputs is not None:
        return inputs
    if isinstance(network, InputPolicy):
        return network
    if device is None:
        device = next(network.parameters()).device
    # Deprecated: callers that pass device/amp_dtype/channels_last for a bare module should
    # pass ``inputs=<the algorithm>`` so that evaluation follows the algorithm's own input path.
    return _LegacyInputs(torch.device(device), amp_dtype, channels_last)


def evaluate(
    network: nn.Module,
    loader: DataLoader,
    device: torch.device | None = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    *,
    inputs: InputPolicy | None = None,
) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``network.predict`` over ``loader``.

    Inputs go through ``inputs.prepare_input`` and the forward runs in ``inputs.autocast()``;
    ``inputs`` defaults to ``network`` itself when it has those methods (an Algorithm).
    ``device``, ``amp_dtype`` and ``channels_last`` are used only for a bare module when no
    ``inputs`` is given (the older calling convention). Labels go to the device of the
    prepared inputs. Sums stay on the device; one host read at the end.
    """
    policy = _input_policy(network, inputs, device, amp_dtype, channels_last)
    was_training = network.training
    network.eval()
    correct: torch.Tensor | None = None
    loss_sum: torch.Tensor | None = None
    total = 0
    with torch.inference_mode(), policy.autocast():
        for x, y in loader:
            x = policy.prepare_input(x)
            y = y.to(x.device, non_blocking=True)
            logits = network.predict(x).float()
            batch_loss = F.cross_entropy(logits, y, reduction="sum")
            batch_correct = (logits.argmax(1) == y).sum()
            loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
            correct = batch_correct if correct is None else correct + batch_correct
            total += len(y)
    network.train(was_training)
    if total == 0 or correct is None or loss_sum is None:
        return float("nan"), float("nan")
    return (correct / total).item(), (loss_sum / total).item()
