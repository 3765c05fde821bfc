"""SWAD's loss valley: when dense weight averaging starts and ends.

SWAD (Cha et al., "SWAD: Domain Generalization by Seeking Flat Minima", arXiv 2102.08604)
averages weights only while the training-domain validation loss sits in a "valley".
Training is cut into *segments* between two evaluations; :class:`LossValley` decides, from
the validation loss at the end of each segment, which segments belong to the average.
It works on plain floats and knows nothing about weights:
:class:`domainbed.lib.weight_averaging.SegmentAverager` applies its decisions.

``torch.optim.swa_utils`` has no counterpart: there the caller fixes when averaging
starts (e.g. a fixed epoch) and nothing ends it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

__all__ = ["LossValley", "ValleyEvent"]


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

    def __init__(self, n_converge: int, n_tolerance: int, tolerance_ratio: float) -> None:
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
        self._window = deque(((int(i), float(x)) for i, x in state["window"]), maxlen=self.n_converge)
        self._pending = deque((int(i), float(x)) for i, x in state["pending"])
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
