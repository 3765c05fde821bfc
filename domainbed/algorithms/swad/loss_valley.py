"""SWAD's loss valley: which segments join the average, and with what weights.

SWAD (Cha et al., "SWAD: Domain Generalization by Seeking Flat Minima", arXiv 2102.08604)
averages weights only while the training-domain validation loss sits in a "valley".
Training is cut into *segments* between two evaluations (segment 0 is the first step
alone, since DomainBed evaluates at step 0); :class:`LossValley` decides, from the
validation loss at the end of each segment, which segments belong to the average. It works
on plain floats and knows nothing about weights:
:class:`domainbed.algorithms.swad.weight_averaging.SegmentAverager` applies its decisions.

Two rules (hparam ``swad_rule``) share the start and the stop and differ in what is
averaged. Losses are assumed positive.

- Start: when the oldest of the last ``n_converge`` segments has the lowest loss of them
  (ties count as lowest). That segment, ``k``, is the valley's first; the threshold is the
  mean loss of the window times ``1 + tolerance_ratio``.
- Stop: the detector watches the last ``n_tolerance`` segments (fewer early in training).
  Once the oldest of them is ``k`` or later, the valley ends (training stops) as soon as all
  of their losses exceed the threshold.

``official`` (default) reproduces what the authors' released code computes, so that our
numbers compare with the published ones; its quirks are kept on purpose:

- At the start it also takes segments from the watch window in front of the window's
  tail: with ``n_tolerance > n_converge``, of the first ``n_tolerance - n_converge + 1``
  watched segments (``k`` the last of them once the watch window is full), those after the
  segment following the latest one above the threshold, or all but the first when none is.
  With ``n_tolerance < n_converge`` it takes the ``n_converge - n_tolerance`` segments after
  ``k``; with equal sizes, none.
- Each later evaluation whose watch window starts at ``k`` or later adds that oldest watched
  segment *again*, even if it was taken at the start (so ``k`` usually counts twice; early
  in training, while the watch window is not yet full, its oldest is added at every call).
- At the end of training, if the valley has not ended, the oldest watched segment is
  dropped and the others are added in order while the lowest loss from there on stays at or
  under the threshold (a contiguous run).
- If nothing was added, the average is segment ``k`` alone.
- Every addition weighs the same, whatever its segment's length (a running mean of segment
  means): the one-step segment 0 weighs as much as a full one.

``paper`` is Algorithm 1 of the paper, with the end-of-training rule above: the average runs
from ``k`` to the segment before the first watch window all above the threshold (or, at the
end of training, to the last segment under it), each segment once, each *step* weighing the
same. We offer it because the doubled and earlier segments and the per-segment weights of
``official`` look like artefacts of its bookkeeping rather than the method.

``torch.optim.swa_utils`` has no counterpart: there the caller fixes when averaging
starts (e.g. a fixed epoch) and nothing ends it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from domainbed.lib.errors import UserError

__all__ = ["LossValley", "ValleyEvent", "RULES"]

RULES = ("official", "paper")


@dataclass
class ValleyEvent:
    """What one :meth:`LossValley.update` / :meth:`LossValley.finish` call decided.

    Attributes:
        segment: index of the segment this call closed (``None`` for ``finish()``).
        started: averaging started in this call.
        ended: the valley ended in this call: stop training; nothing more is accepted.
        accepted: additions to the final average in this call, in order; under ``official``
            a segment may appear more than once (each appearance is one equal share).
        discard_before: no segment with a smaller index can be added any more, so its
            per-segment weights can be freed.
    """

    segment: Optional[int]
    started: bool = False
    ended: bool = False
    accepted: list[int] = field(default_factory=list)
    discard_before: int = 0


class LossValley:
    """SWAD's loss-valley detector (arXiv 2102.08604), on plain floats; see the module doc.

    Call :meth:`update` once per evaluation with the validation loss of the segment that
    just closed (segments are numbered 0, 1, 2, ...), and :meth:`finish` at the end of
    training. :meth:`segment_weights` gives each segment's share of the final average.
    """

    def __init__(self, n_converge: int, n_tolerance: int, tolerance_ratio: float, rule: str = "official") -> None:
        if n_converge < 1:
            raise ValueError(f"n_converge must be >= 1, got {n_converge}.")
        if n_tolerance < 1:
            raise ValueError(f"n_tolerance must be >= 1, got {n_tolerance}.")
        if tolerance_ratio < 0:
            raise ValueError(f"tolerance_ratio must be >= 0, got {tolerance_ratio}.")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}.")
        self.n_converge, self.n_tolerance = int(n_converge), int(n_tolerance)
        self.tolerance_ratio = float(tolerance_ratio)
        self.rule = rule
        self._n_segments = 0
        # (index, loss) pairs: the last n_converge segments (read only before the start) and
        # the last n_tolerance ones (the watch window).
        self._window: deque[tuple[int, float]] = deque(maxlen=self.n_converge)
        self._watch: deque[tuple[int, float]] = deque(maxlen=self.n_tolerance)
        # `paper`: the segments after the last accepted one (with n_tolerance < n_converge
        # some of them have already left the watch window).
        self._tail: list[tuple[int, float]] = []
        self._start: Optional[int] = None
        self._threshold: Optional[float] = None
        self._ended = False
        self._finished = False
        self._accepted: list[int] = []

    def state_dict(self) -> dict[str, Any]:
        """Plain values only, so a checkpoint loads with ``torch.load(weights_only=True)``."""
        return {
            "rule": self.rule, "n_segments": self._n_segments, "window": [list(p) for p in self._window],
            "watch": [list(p) for p in self._watch], "tail": [list(p) for p in self._tail], "start": self._start, "threshold": self._threshold,
            "ended": self._ended, "finished": self._finished, "accepted": list(self._accepted),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "watch" not in state:
            # Versions before the official rule kept other state, which cannot be converted.
            raise UserError(
                "this SWAD checkpoint was written by the earlier loss-valley rule (before swad_rule existed); "
                "finish the run with the version that started it, or start it again")
        if state["rule"] != self.rule:
            raise UserError(f"this SWAD checkpoint was written with swad_rule={state['rule']}, "
                             f"not {self.rule}; resume with the same hparams")
        self._n_segments = int(state["n_segments"])
        self._window = deque(((int(i), float(x)) for i, x in state["window"]), maxlen=self.n_converge)
        self._watch = deque(((int(i), float(x)) for i, x in state["watch"]), maxlen=self.n_tolerance)
        self._tail = [(int(i), float(x)) for i, x in state["tail"]]
        self._start = None if state["start"] is None else int(state["start"])
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
    def start_segment(self) -> Optional[int]:
        """The valley's first segment (the lowest of the start window); ``None`` before."""
        return self._start

    @property
    def accepted_segments(self) -> list[int]:
        """Every addition to the final average so far, in order (repeats under ``official``)."""
        return list(self._accepted)

    @property
    def n_segments(self) -> int:
        """How many segments :meth:`update` has seen."""
        return self._n_segments

    @property
    def equal_segment_weights(self) -> bool:
        """Each addition weighs the same (``official``); otherwise each step does (``paper``)."""
        return self.rule == "official"

    def segment_weights(self, steps: Sequence[int]) -> dict[int, float]:
        """Each segment's share of the final average, given every segment's number of steps."""
        shares: dict[int, float] = {}
        for i in self._accepted:
            shares[i] = shares.get(i, 0.0) + (1.0 if self.equal_segment_weights else float(steps[i]))
        total = sum(shares.values())
        return {i: share / total for i, share in sorted(shares.items())}

    def _discard_before(self) -> int:
        needed = [i for i, _ in (*self._watch, *self._window, *self._tail)]
        if self._start is not None and not self._accepted:
            needed.append(self._start)  # the fallback average of `official`
        return min(needed, default=self._n_segments)

    def _event(self, index: Optional[int], accepted: list[int], **flags: bool) -> ValleyEvent:
        self._accepted.extend(accepted)
        if self.rule == "paper" and accepted:
            self._tail = [(i, x) for i, x in self._tail if i > accepted[-1]]
        return ValleyEvent(segment=index, accepted=accepted, discard_before=self._discard_before(), **flags)

    def _up_to(self, last: int) -> list[int]:
        """``paper``: the segments after the last accepted one, up to ``last``."""
        return [i for i, _ in self._tail if i <= last]

    def update(self, loss: float) -> ValleyEvent:
        """Feed the validation loss of the segment that just closed; see the module doc."""
        if self._finished:
            raise ValueError("LossValley.update() called after finish(); create a new detector.")
        index, loss = self._n_segments, float(loss)
        self._n_segments += 1
        if self._ended:
            # Training was told to stop; a late segment is simply rejected.
            return ValleyEvent(segment=index, discard_before=index + 1)
        self._watch.append((index, loss))
        if self.is_started and self.rule == "paper":
            self._tail.append((index, loss))
        if not self.is_started:
            self._window.append((index, loss))
            return self._update_before_start(index)
        return self._update_in_valley(index)

    def _update_before_start(self, index: int) -> ValleyEvent:
        losses = [x for _, x in self._window]
        if len(losses) < self.n_converge or any(x < losses[0] for x in losses):
            return self._event(index, [])
        self._start = self._window[0][0]
        self._threshold = sum(losses) / len(losses) * (1.0 + self.tolerance_ratio)
        if self.rule == "paper":
            self._tail = list(self._window)[1:]
            self._window.clear()
            return self._event(index, [self._start], started=True)
        self._window.clear()
        return self._event(index, self._official_start_additions(losses), started=True)

    def _official_start_additions(self, window_losses: list[float]) -> list[int]:
        assert self._threshold is not None and self._start is not None
        extra = self.n_tolerance - self.n_converge
        if extra < 0:  # the segments right after k
            return [self._start + j for j in range(1, 1 - extra)]
        if extra == 0:
            return []
        # The first extra + 1 watched segments; skip through the one after the latest above
        # the threshold (or the first, when none is).
        head = list(self._watch)[: extra + 1]
        above = [j for j, (_, x) in enumerate(head) if x > self._threshold]
        skip = (above[-1] if above else -1) + 2
        return [i for i, _ in head[skip:]]

    def _update_in_valley(self, index: int) -> ValleyEvent:
        assert self._threshold is not None and self._start is not None
        oldest = self._watch[0][0]
        if oldest < self._start:
            return self._event(index, [])
        if min(x for _, x in self._watch) > self._threshold:
            self._ended = True
            if self.rule == "paper":
                accepted = self._up_to(oldest - 1)
            else:
                accepted = [] if self._accepted else [self._start]
            self._watch.clear()
            self._tail = []
            return self._event(index, accepted, ended=True)
        return self._event(index, self._up_to(oldest) if self.rule == "paper" else [oldest])

    def finish(self) -> ValleyEvent:
        """End of training: add the watched segments the end-of-training rule takes.

        Everything is decided afterwards (``discard_before`` = number of segments).
        Calling it again, or after the valley ended, adds nothing.
        """
        accepted: list[int] = []
        if self.is_started and not self._ended and not self._finished:
            assert self._threshold is not None and self._start is not None
            # `official` drops the oldest watched segment, handled by the last update.
            rest = list(self._tail) if self.rule == "paper" else list(self._watch)[1:]
            while rest and min(x for _, x in rest) <= self._threshold:
                accepted.append(rest.pop(0)[0])
            if self.rule == "official" and not accepted and not self._accepted:
                accepted = [self._start]
        self._accepted.extend(accepted)
        self._watch.clear()
        self._window.clear()
        self._tail = []
        self._finished = True
        return ValleyEvent(segment=None, accepted=accepted, discard_before=self._n_segments)
