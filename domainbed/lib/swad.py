"""SWAD's functional core: dense weight averaging inside a loss valley.

SWAD (Cha et al., "SWAD: Domain Generalization by Seeking Flat Minima", arXiv 2102.08604)
averages the weights at every step, but only over the part of training where the
training-domain validation loss sits in a "valley". Training is cut into *segments*
between two evaluations; the rule (docs/design.md) is implemented by :class:`LossValley`,
the averaging by :class:`WeightAverager`, and :class:`SegmentAverager` ties them to a
training loop. :func:`recompute_bn` refreshes BatchNorm statistics of the result.

Everything here is independent of the trainer and tested alone.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import torch
from torch import Tensor, nn

__all__ = [
    "LossValley",
    "SegmentAverager",
    "ValleyEvent",
    "WeightAverager",
    "recompute_bn",
]

StateLike = Union[nn.Module, Mapping[str, Tensor]]
KeyFilter = Callable[[str], bool]


# --------------------------------------------------------------------------- detector


@dataclass
class ValleyEvent:
    """What one :meth:`LossValley.update` / :meth:`LossValley.finish` call decided.

    Attributes:
        segment: index of the segment this call closed (``None`` for ``finish()``).
        started: averaging started in this call.
        ended: the valley ended in this call: stop training; nothing more is accepted.
        accepted: segments that join the final average in this call, oldest first.
        discard_before: every segment with a smaller index is decided (accepted now or
            earlier, or rejected for good), so its per-segment weights can be freed.
    """

    segment: Optional[int]
    started: bool = False
    ended: bool = False
    accepted: list[int] = field(default_factory=list)
    discard_before: int = 0


class LossValley:
    """SWAD's loss-valley detector (arXiv 2102.08604), on plain floats.

    Call :meth:`update` once per evaluation with the validation loss of the segment that
    just closed (segments are numbered 0, 1, 2, ...). SWAD uses the training-domain
    validation loss of the online model at the end of the segment. Losses are assumed
    positive (the threshold scales the window mean by ``1 + tolerance_ratio``).

    - Start: when the oldest of the last ``n_converge`` segments has the lowest loss of
      them (ties count as lowest). Those ``n_converge`` segments are accepted and the
      threshold becomes their mean loss times ``1 + tolerance_ratio``.
    - Then each new segment waits in a pending buffer. Once it holds ``n_tolerance``
      segments: if all of their losses exceed the threshold the valley ends (they are
      rejected and training should stop); otherwise the oldest pending one is accepted.
    - :meth:`finish` (end of training) accepts the pending segments whose loss is at most
      the threshold.
    """

    def __init__(
        self, n_converge: int = 3, n_tolerance: int = 6, tolerance_ratio: float = 0.3
    ) -> None:
        if n_converge < 1:
            raise ValueError(f"n_converge must be >= 1, got {n_converge}.")
        if n_tolerance < 1:
            raise ValueError(f"n_tolerance must be >= 1, got {n_tolerance}.")
        if tolerance_ratio < 0:
            raise ValueError(f"tolerance_ratio must be >= 0, got {tolerance_ratio}.")
        self.n_converge = int(n_converge)
        self.n_tolerance = int(n_tolerance)
        self.tolerance_ratio = float(tolerance_ratio)
        self._n_segments = 0
        # (index, loss) pairs: the convergence window before the start, pending after.
        self._window: deque[tuple[int, float]] = deque(maxlen=self.n_converge)
        self._pending: deque[tuple[int, float]] = deque()
        self._threshold: Optional[float] = None
        self._ended = False
        self._finished = False
        self._accepted: list[int] = []

    def state_dict(self) -> dict[str, Any]:
        """Plain values only, so a checkpoint loads with ``torch.load(weights_only=True)``."""
        return {
            "n_segments": self._n_segments, "window": [list(p) for p in self._window],
            "pending": [list(p) for p in self._pending], "threshold": self._threshold,
            "ended": self._ended, "finished": self._finished, "accepted": list(self._accepted),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._n_segments = int(state["n_segments"])
        self._window = deque(((int(i), float(l)) for i, l in state["window"]), maxlen=self.n_converge)
        self._pending = deque((int(i), float(l)) for i, l in state["pending"])
        self._threshold = None if state["threshold"] is None else float(state["threshold"])
        self._ended, self._finished = bool(state["ended"]), bool(state["finished"])
        self._accepted = [int(i) for i in state["accepted"]]

    @property
    def is_started(self) -> bool:
        """Averaging has started (the valley was found)."""
        return self._threshold is not None

    @property
    def is_ended(self) -> bool:
        """The valley has ended: training should stop."""
        return self._ended

    @property
    def threshold(self) -> Optional[float]:
        """Loss above which a segment is outside the valley; ``None`` before the start."""
        return self._threshold

    @property
    def accepted_segments(self) -> list[int]:
        """Every segment accepted into the final average so far, in order."""
        return list(self._accepted)

    @property
    def n_segments(self) -> int:
        """How many segments :meth:`update` has seen."""
        return self._n_segments

    def update(self, loss: float) -> ValleyEvent:
        """Feed the validation loss of the segment that just closed; see the class doc."""
        if self._finished:
            raise ValueError("LossValley.update() called after finish(); create a new detector.")
        loss = float(loss)
        index = self._n_segments
        self._n_segments += 1

        if self._ended:
            # Training was told to stop; a late segment is simply rejected.
            return ValleyEvent(segment=index, discard_before=index + 1)

        if not self.is_started:
            return self._update_before_start(index, loss)
        return self._update_in_valley(index, loss)

    def _update_before_start(self, index: int, loss: float) -> ValleyEvent:
        self._window.append((index, loss))
        oldest_loss = self._window[0][1]
        window_full = len(self._window) == self.n_converge
        if window_full and all(oldest_loss <= other for _, other in self._window):
            losses = [value for _, value in self._window]
            self._threshold = sum(losses) / len(losses) * (1.0 + self.tolerance_ratio)
            accepted = [i for i, _ in self._window]
            self._accepted.extend(accepted)
            self._window.clear()
            return ValleyEvent(
                segment=index, started=True, accepted=accepted, discard_before=index + 1
            )
        # The next window drops the current oldest once it is full, so it is decided.
        first_live = index - self.n_converge + 2
        return ValleyEvent(segment=index, discard_before=max(0, first_live))

    def _update_in_valley(self, index: int, loss: float) -> ValleyEvent:
        assert self._threshold is not None
        self._pending.append((index, loss))
        if len(self._pending) < self.n_tolerance:
            return ValleyEvent(segment=index, discard_before=self._pending[0][0])
        if min(value for _, value in self._pending) > self._threshold:
            self._ended = True
            self._pending.clear()
            return ValleyEvent(segment=index, ended=True, discard_before=index + 1)
        oldest, _ = self._pending.popleft()
        self._accepted.append(oldest)
        return ValleyEvent(segment=index, accepted=[oldest], discard_before=oldest + 1)

    def finish(self) -> ValleyEvent:
        """End of training: accept pending segments whose loss is at most the threshold.

        Everything is decided afterwards (``discard_before`` = number of segments).
        Calling it again, or after the valley ended, accepts nothing.
        """
        accepted: list[int] = []
        if self.is_started and not self._ended and not self._finished:
            assert self._threshold is not None
            accepted = [i for i, value in self._pending if value <= self._threshold]
            self._accepted.extend(accepted)
        self._pending.clear()
        self._window.clear()
        self._finished = True
        return ValleyEvent(segment=None, accepted=accepted, discard_before=self._n_segments)


# ---------------------------------------------------------------------------- averager


def _state_of(model_or_state: StateLike) -> Mapping[str, Tensor]:
    if isinstance(model_or_state, nn.Module):
        return model_or_state.state_dict()
    if isinstance(model_or_state, Mapping):
        return model_or_state
    raise ValueError(
        f"expected an nn.Module or a state dict, got {type(model_or_state).__name__}."
    )


class WeightAverager:
    """Running sums of a model's floating-point state (parameters and float buffers).

    ``add`` is called every step (SWAD averages densely), so it stays on the device and
    never synchronises with the host: the count is a Python int. Integer buffers (e.g.
    BatchNorm's ``num_batches_tracked``) are not averaged; the latest value is kept.

    Args:
        include: optional predicate on state-dict names; names it rejects are ignored
            (e.g. a frozen prior network that needs no averaging).
        dtype: accumulation dtype of the sums (fp32 by default; fp64 for very long
            averages on devices that support it).
        device: where the sums live; default: where each tensor was when first added
            (pass ``"cpu"`` to keep them off the accelerator at the cost of a copy per step).
    """

    def __init__(
        self,
        include: Optional[KeyFilter] = None,
        dtype: torch.dtype = torch.float32,
        device: Optional[Union[str, torch.device]] = None,
    ) -> None:
        if not dtype.is_floating_point:
            raise ValueError(f"accumulation dtype must be floating point, got {dtype}.")
        self.include = include
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        self.count = 0
        self._sums: dict[str, Tensor] = {}
        self._latest: dict[str, Tensor] = {}  # non-float entries, copied not averaged
        self._dtypes: dict[str, torch.dtype] = {}  # original dtype of every kept entry
        self._order: list[str] = []

    def _selected(self, state: Mapping[str, Tensor]) -> list[str]:
        return [k for k in state if self.include is None or self.include(k)]

    def _check_keys(self, keys: list[str]) -> None:
        if keys != self._order:
            missing = sorted(set(self._order) - set(keys))
            extra = sorted(set(keys) - set(self._order))
            raise ValueError(
                "state does not match the one averaged so far "
                f"(missing: {missing[:5]}, unexpected: {extra[:5]}); average one model "
                "architecture per WeightAverager."
            )

    def _target(self, value: Tensor) -> torch.device:
        return self.device if self.device is not None else value.device

    def add(self, model_or_state: StateLike) -> None:
        """Add the current weights of a model (or a state dict) to the sums."""
        state = _state_of(model_or_state)
        keys = self._selected(state)
        if self.count == 0:
            self._order = keys
            for key in keys:
                value = state[key].detach()
                self._dtypes[key] = value.dtype
                if value.is_floating_point():
                    self._sums[key] = value.to(self._target(value), self.dtype, copy=True)
                else:
                    self._latest[key] = value.to(self._target(value), copy=True)
        else:
            self._check_keys(keys)
            for key, total in self._sums.items():
                # add_ promotes the addend into the accumulator's dtype/device.
                total.add_(state[key].detach().to(total.device))
            for key, latest in self._latest.items():
                latest.copy_(state[key].detach())
        self.count += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "count": self.count, "order": list(self._order), "sums": dict(self._sums),
            "latest": dict(self._latest), "dtypes": {k: str(v).replace("torch.", "") for k, v in self._dtypes.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.count = int(state["count"])
        self._order = list(state["order"])
        self._sums = {k: v.to(self.device or v.device, self.dtype) for k, v in state["sums"].items()}
        self._latest = {k: v.to(self.device or v.device) for k, v in state["latest"].items()}
        self._dtypes = {k: getattr(torch, v) for k, v in state["dtypes"].items()}

    def merge(self, other: WeightAverager) -> None:
        """Add another averager's sums and count (a count-weighted merge of the means).

        ``other`` is taken as the more recent one: its integer buffers replace ours.
        """
        if other.count == 0:
            return
        if self.count == 0:
            self._order = list(other._order)
            self._dtypes = dict(other._dtypes)
            self._sums = {
                k: v.to(self.device or v.device, self.dtype, copy=True)
                for k, v in other._sums.items()
            }
            self._latest = {
                k: v.to(self.device or v.device, copy=True) for k, v in other._latest.items()
            }
        else:
            self._check_keys(other._order)
            for key, total in self._sums.items():
                total.add_(other._sums[key].to(total.device))
            for key, latest in self._latest.items():
                latest.copy_(other._latest[key])
        self.count += other.count

    def mean_state(self) -> dict[str, Tensor]:
        """The averaged state, in the original key order and dtypes."""
        if self.count == 0:
            raise ValueError("nothing has been added to this WeightAverager yet.")
        out: dict[str, Tensor] = {}
        for key in self._order:
            if key in self._sums:
                out[key] = (self._sums[key] / self.count).to(self._dtypes[key])
            else:
                out[key] = self._latest[key].clone()
        return out

    def load_into(self, model: nn.Module) -> None:
        """Copy the averaged state into ``model`` (entries filtered out are left alone)."""
        result = model.load_state_dict(self.mean_state(), strict=False)
        if result.unexpected_keys:
            raise ValueError(
                f"the averaged state has entries the model lacks: {result.unexpected_keys[:5]}; "
                "load it into the same architecture it was averaged from."
            )


# ----------------------------------------------------------------------- training glue


class SegmentAverager:
    """SWAD for a training loop: dense averaging per segment plus the valley detector.

    Usage::

        swad = SegmentAverager(n_converge=3, n_tolerance=6, tolerance_ratio=0.3)
        for step in ...:
            train_step(model)
            swad.step(model)                       # every step
            if evaluation_step:
                swad.end_segment(val_loss)         # training-domain validation loss
                if swad.should_stop:
                    break
        swad.finish()
        model_avg.load_state_dict(swad.averaged_state(), strict=False)

    Memory: besides the final average, it keeps the per-segment sums of the open segment
    and of undecided segments only (at most ``max(n_converge, n_tolerance)`` of them).

    If the valley never started, :meth:`averaged_state` after :meth:`finish` falls back,
    as SWAD does, to the average of the last closed segment (:attr:`is_fallback`).
    """

    def __init__(
        self,
        n_converge: int = 3,
        n_tolerance: int = 6,
        tolerance_ratio: float = 0.3,
        keys: Optional[KeyFilter] = None,
        dtype: torch.dtype = torch.float32,
        device: Optional[Union[str, torch.device]] = None,
    ) -> None:
        self.valley = LossValley(n_converge, n_tolerance, tolerance_ratio)
        self._new = lambda: WeightAverager(include=keys, dtype=dtype, device=device)
        self._final = self._new()
        self._current = self._new()
        self._segments: dict[int, WeightAverager] = {}
        self._last_closed: Optional[WeightAverager] = None
        self._finished = False

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume averaging after a restart (tensors and plain values)."""
        return {
            "valley": self.valley.state_dict(), "final": self._final.state_dict(),
            "current": self._current.state_dict(),
            "segments": {str(i): a.state_dict() for i, a in self._segments.items()},
            "last_closed": None if self._last_closed is None else self._last_closed.state_dict(),
            "finished": self._finished,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        def averager(sub: Mapping[str, Any]) -> WeightAverager:
            a = self._new()
            a.load_state_dict(sub)
            return a

        self.valley.load_state_dict(state["valley"])
        self._final, self._current = averager(state["final"]), averager(state["current"])
        self._segments = {int(i): averager(sub) for i, sub in state["segments"].items()}
        self._last_closed = None if state["last_closed"] is None else averager(state["last_closed"])
        self._finished = bool(state["finished"])

    @property
    def has_average(self) -> bool:
        """True once any segment was accepted into the final average."""
        return self._final.count > 0

    @property
    def should_stop(self) -> bool:
        """The valley ended: further training cannot change the average."""
        return self.valley.is_ended

    @property
    def is_fallback(self) -> bool:
        """:meth:`averaged_state` returns the last segment's average (no valley found)."""
        return self._finished and not self.has_average and self._last_closed is not None

    @property
    def n_live_segments(self) -> int:
        """Closed segments whose weights are still held, undecided."""
        return len(self._segments)

    @property
    def n_averaged_steps(self) -> int:
        """How many steps the final average covers."""
        return self._final.count

    def step(self, model: StateLike) -> None:
        """Add the current weights to the open segment (a no-op once averaging is over)."""
        if self.should_stop or self._finished:
            return
        self._current.add(model)

    def end_segment(self, val_loss: float) -> ValleyEvent:
        """Close the open segment with its validation loss and apply the detector's decision."""
        if self._finished:
            raise ValueError("end_segment() called after finish().")
        if self.should_stop:
            self._current = self._new()
            return self.valley.update(val_loss)
        if self._current.count == 0:
            raise ValueError(
                "end_segment() called with no step() since the previous one; call step(model) "
                "after every optimizer step."
            )
        index = self.valley.n_segments
        self._segments[index] = self._current
        self._last_closed = self._current
        self._current = self._new()
        event = self.valley.update(val_loss)
        self._apply(event)
        return event

    def finish(self) -> ValleyEvent:
        """End of training: accept the pending segments under the threshold, free the rest."""
        if self._finished:
            return ValleyEvent(segment=None, discard_before=self.valley.n_segments)
        event = self.valley.finish()
        self._apply(event)
        self._finished = True
        self._current = self._new()  # steps after the last evaluation were never judged
        if self.has_average:
            self._last_closed = None
        return event

    def _apply(self, event: ValleyEvent) -> None:
        for index in event.accepted:
            self._final.merge(self._segments[index])
        for index in [i for i in self._segments if i < event.discard_before]:
            del self._segments[index]

    def averaged_state(self) -> dict[str, Tensor]:
        """The SWAD average (only the entries selected by ``keys``)."""
        if self.has_average:
            return self._final.mean_state()
        if self.is_fallback:
            assert self._last_closed is not None
            return self._last_closed.mean_state()
        raise ValueError(
            "no SWAD average yet: no segment has been accepted (the loss valley has not "
            "started). Call finish() at the end of training to fall back to the last "
            "segment's average, or evaluate the live model."
        )

    def load_into(self, model: nn.Module) -> None:
        """Copy :meth:`averaged_state` into ``model``; entries filtered out are left alone."""
        result = model.load_state_dict(self.averaged_state(), strict=False)
        if result.unexpected_keys:
            raise ValueError(
                f"the averaged state has entries the model lacks: {result.unexpected_keys[:5]}."
            )


# ------------------------------------------------------------------------ batch norm


def _inputs_of(batch: Any) -> Tensor:
    """The input tensor of a batch: ``x``, ``(x, y)``, or a list of ``(x, y)`` per domain."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch:
        first = batch[0]
        if isinstance(first, Tensor):
            return first
        if isinstance(first, (list, tuple)) and first and isinstance(first[0], Tensor):
            return torch.cat([pair[0] for pair in batch])
    raise ValueError(
        "recompute_bn expects batches given as x, (x, y) or a list of (x, y) per domain; "
        f"got {type(batch).__name__}."
    )


_NO_BATCH = object()


@torch.no_grad()
def recompute_bn(model: nn.Module, batches: Iterable[Any], n_batches: int) -> int:
    """Recompute the BatchNorm running statistics of a (weight-averaged) model.

    Averaged weights do not match the running statistics accumulated along the way, so
    SWAD (arXiv 2102.08604) re-estimates them on training data. Only needed when BN is
    not frozen: with frozen BN (DomainBed's ResNets) the statistics never changed and
    this must not be called.

    The statistics become the equal-weight average over ``n_batches`` batches (momentum
    ``None``). Only the BN layers are switched to training mode; the rest of the model
    runs in eval mode, so dropout does not distort the statistics. Every module's mode and
    every BN momentum are restored afterwards.

    Args:
        batches: iterable of ``x``, ``(x, y)`` or lists of ``(x, y)`` (one per domain,
            concatenated); inputs are moved to the model's device.
        n_batches: how many batches to use (fewer if the iterable runs out).

    Returns:
        The number of batches used (0 if the model has no BatchNorm layer).
    """
    if n_batches < 1:
        raise ValueError(f"n_batches must be >= 1, got {n_batches}.")
    bn_layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bn_layers:
        return 0
    iterator = iter(batches)
    # Fetch the first batch before resetting anything, so an empty loader leaves the
    # model untouched.
    first = next(iterator, _NO_BATCH)
    if first is _NO_BATCH:
        raise ValueError("recompute_bn got no batches; pass a non-empty loader.")
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in bn_layers}
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    used = 0
    try:
        model.eval()
        for layer in bn_layers:
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average: every batch weighs the same
            layer.train()
        for batch in itertools.chain([first], iterator):
            model(_inputs_of(batch).to(device))
            used += 1
            if used >= n_batches:
                break
    finally:
        for module, mode in modes.items():
            module.training = mode
        for layer, momentum in momenta.items():
            layer.momentum = momentum
    return used
