"""Dense weight averaging over a window chosen after the fact (SWAD, arXiv 2102.08604).

:class:`WeightAverager` keeps running *sums* of a state dict; :class:`SegmentAverager`
keeps one per segment (the steps between two evaluations) and adds to the final average
exactly the segments :class:`domainbed.algorithms.swad.loss_valley.LossValley` accepts: each as one
equal share (its mean) under ``swad_rule = official``, count-weighted (each step the
same) under ``paper``.

How this differs from ``torch.optim.swa_utils``:

- ``AveragedModel.update_parameters`` folds each call into a running mean at once, so
  the caller must know, while training, which steps belong to the average. SWAD learns
  it late (a segment is judged up to ``max(n_converge, n_tolerance) - 1`` evaluations
  after it closed, or at the end of training). A running mean cannot drop steps
  afterwards; separate per-segment sums can be added later or thrown away once decided.
- ``AveragedModel`` interpolates in each parameter's own dtype; the sums here are kept in
  at least float32 (``torch.promote_types(dtype, float32)``) and divided once, so a
  bfloat16 or float16 model is averaged in float32 and cast back at the end.
- ``AveragedModel`` deep-copies the module and averages its parameters; its buffers are
  copied from the latest model, or with ``use_buffers=True`` all averaged, integer ones
  included. Here a state dict is averaged by name: parameters and floating-point buffers
  (BatchNorm running statistics) are averaged, integer buffers (``num_batches_tracked``)
  take the latest value, and no module copy is held; the caller loads the result into a
  network of its own.
- ``SWALR`` has no counterpart: SWAD keeps the training's own learning rate.
- ``update_bn``: see :func:`domainbed.algorithms.swad.batchnorm.recompute_bn`.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from domainbed.algorithms.swad.loss_valley import LossValley, ValleyEvent

__all__ = ["SegmentAverager", "WeightAverager"]


def _sum_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision weights are summed in float32; float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


class WeightAverager:
    """Running sums of a state dict's floating-point entries (parameters and float buffers).

    :meth:`add` is called every step (SWAD averages densely), so it never synchronises with
    the host: the count is a Python int and the sums live on the device of the weights
    added. A state loaded from a CPU checkpoint moves to that device at the next
    :meth:`add`. Integer entries are not averaged; the latest value is kept.
    """

    def __init__(self) -> None:
        self.count = 0
        self._sums: dict[str, Tensor] = {}
        self._latest: dict[str, Tensor] = {}  # non-float entries, copied not averaged
        self._dtypes: dict[str, torch.dtype] = {}  # original dtype of every entry
        self._order: list[str] = []

    def _check_keys(self, keys: list[str]) -> None:
        if keys != self._order:
            missing = sorted(set(self._order) - set(keys))
            extra = sorted(set(keys) - set(self._order))
            raise ValueError(
                "state does not match the one averaged so far "
                f"(missing: {missing[:5]}, unexpected: {extra[:5]}); average one model "
                "architecture per WeightAverager."
            )

    def add(self, state: Mapping[str, Tensor]) -> None:
        """Add the current weights (a state dict) to the sums."""
        keys = list(state)
        if self.count == 0:
            self._order = keys
            for key in keys:
                value = state[key].detach()
                self._dtypes[key] = value.dtype
                if value.is_floating_point():
                    self._sums[key] = value.to(_sum_dtype(value.dtype), copy=True)
                else:
                    self._latest[key] = value.clone()
        else:
            self._check_keys(keys)
            for key, total in self._sums.items():
                value = state[key].detach()
                if total.device != value.device:  # resumed from a checkpoint loaded on the CPU
                    total = self._sums[key] = total.to(value.device)
                total.add_(value)  # add_ promotes the addend into the sum's dtype
            for key, latest in self._latest.items():
                value = state[key].detach()
                if latest.device != value.device:
                    self._latest[key] = value.clone()
                else:
                    latest.copy_(value)
        self.count += 1

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values (the key names are part of the checkpoint format)."""
        return {
            "count": self.count, "order": list(self._order), "sums": dict(self._sums),
            "latest": dict(self._latest),
            "dtypes": {k: str(v).replace("torch.", "") for k, v in self._dtypes.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.count = int(state["count"])
        self._order = list(state["order"])
        # Copies: the loaded tensors are summed into in place.
        self._sums = {k: v.to(_sum_dtype(v.dtype), copy=True) for k, v in state["sums"].items()}
        self._latest = {k: v.clone() for k, v in state["latest"].items()}
        self._dtypes = {k: getattr(torch, v) for k, v in state["dtypes"].items()}

    def merge(self, other: WeightAverager) -> None:
        """Add another averager's sums and count (a count-weighted merge of the means).

        ``other`` is taken as the more recent one: its integer entries replace ours.
        """
        self._add_sums(other, 1.0, other.count)

    def add_mean(self, other: WeightAverager) -> None:
        """Add ``other``'s mean as one more equally weighted item (count + 1), as SWAD's
        released code folds each segment's average into a running mean.

        ``other`` is taken as the more recent one: its integer entries replace ours.
        """
        if other.count:
            self._add_sums(other, 1.0 / other.count, 1)

    def _add_sums(self, other: WeightAverager, scale: float, count: int) -> None:
        """Add ``scale`` times ``other``'s sums and ``count`` to the count; ``other``'s
        integer entries replace ours (it is the more recent one)."""
        if other.count == 0:
            return
        if self.count == 0:
            self._order = list(other._order)
            self._dtypes = dict(other._dtypes)
            self._sums = {k: v * scale for k, v in other._sums.items()}  # a new tensor: never aliases other's
        else:
            self._check_keys(other._order)
            for key, total in self._sums.items():
                addend = other._sums[key]
                if total.device != addend.device:  # follow the newer sums' device
                    total = self._sums[key] = total.to(addend.device)
                total.add_(addend * scale)
        self._latest = {k: v.clone() for k, v in other._latest.items()}
        self.count += count

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


class SegmentAverager:
    """SWAD for a training loop: per-segment sums plus the loss-valley detector.

    Usage::

        swad = SegmentAverager(n_converge=3, n_tolerance=6, tolerance_ratio=0.3)
        for step in ...:
            train_step(model)
            swad.step(predictive_state)            # every step
            if evaluation_step:
                swad.end_segment(val_loss)         # training-domain validation loss
                if swad.should_stop:
                    break
        swad.finish()
        swad.load_into(predictor)

    Memory: besides the final sums, it holds the sums of the open segment and of the
    closed ones the valley may still add (about ``max(n_converge, n_tolerance)``).

    If the valley never started, :meth:`averaged_state` after :meth:`finish` falls back,
    as SWAD does, to the average of the last closed segment (:attr:`is_fallback`).
    """

    def __init__(self, n_converge: int, n_tolerance: int, tolerance_ratio: float, rule: str = "official") -> None:
        self.valley = LossValley(n_converge, n_tolerance, tolerance_ratio, rule)
        self._final = WeightAverager()
        self._current = WeightAverager()
        self._segments: dict[int, WeightAverager] = {}
        self._last_closed: Optional[WeightAverager] = None
        self._finished = False

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume averaging after a restart (tensors and plain values).

        ``segments`` holds the closed, undecided segments. The key names are part of the
        checkpoint format: a run resumes from a checkpoint written by an older version.
        """
        return {
            "valley": self.valley.state_dict(), "final": self._final.state_dict(),
            "current": self._current.state_dict(),
            "segments": {str(i): a.state_dict() for i, a in self._segments.items()},
            "last_closed": None if self._last_closed is None else self._last_closed.state_dict(),
            "finished": self._finished,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        def averager(sub: Mapping[str, Any]) -> WeightAverager:
            a = WeightAverager()
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

    def step(self, state: Mapping[str, Tensor]) -> None:
        """Add the current weights to the open segment (a no-op once averaging is over)."""
        if self.should_stop or self._finished:
            return
        self._current.add(state)

    def end_segment(self, val_loss: float) -> ValleyEvent:
        """Close the open segment with its validation loss and apply the detector's decision."""
        if self._finished:
            raise ValueError("end_segment() called after finish().")
        if self.should_stop:
            self._current = WeightAverager()
            return self.valley.update(val_loss)
        if self._current.count == 0:
            raise ValueError(
                "end_segment() called with no step() since the previous one; call step() "
                "after every optimizer step."
            )
        index = self.valley.n_segments
        self._segments[index] = self._current
        self._last_closed = self._current
        self._current = WeightAverager()
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
        self._current = WeightAverager()  # steps after the last evaluation were never judged
        if self.has_average:
            self._last_closed = None
        return event

    def _apply(self, event: ValleyEvent) -> None:
        for index in event.accepted:
            if self.valley.equal_segment_weights:
                self._final.add_mean(self._segments[index])
            else:
                self._final.merge(self._segments[index])
        for index in [i for i in self._segments if i < event.discard_before]:
            del self._segments[index]

    def averaged_state(self) -> dict[str, Tensor]:
        """The SWAD average of the states given to :meth:`step`."""
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
        """Copy :meth:`averaged_state` into ``model``; entries it lacks are left alone."""
        result = model.load_state_dict(self.averaged_state(), strict=False)
        if result.unexpected_keys:
            raise ValueError(
                f"the averaged state has entries the model lacks: {result.unexpected_keys[:5]}; "
                "load it into the architecture it was averaged from."
            )
