"""A count of optimizer updates that survives a resume and is free to read.

Several algorithms switch behaviour at a given update (IRM's, VREx's, IB's, Fishr's and RDM's
penalty annealing, EQRM's burn-in, TRM's start, DANN's alternation of discriminator and
generator steps, ERM++'s linear-probing phase). The count must be saved with the model, so
that a resumed run switches at the same update, so it is a buffer (``<attribute>.count`` in
the algorithm's ``state_dict()``); but reading a CUDA buffer on the host waits for the
device, so a Python int mirrors it and is refreshed only when a state dict is loaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class UpdateCounter(nn.Module):
    """Updates done so far: the buffer ``count`` (in ``state_dict()``) and its host mirror."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self._value = 0

    @property
    def value(self) -> int:
        """The number of updates done; never synchronises with the device."""
        return self._value

    def increment(self) -> int:
        """Count one more update; returns the new count."""
        self._value += 1
        self.count.fill_(self._value)  # an asynchronous device write, no host wait
        return self._value

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        key = prefix + "count"
        if key in state_dict:
            self._value = int(state_dict[key])

    def extra_repr(self) -> str:
        return f"value={self._value}"
