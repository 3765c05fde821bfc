"""SWAD's loss-valley rule (domainbed/lib/loss_valley.py, arXiv 2102.08604) on
hand-worked loss sequences."""

from __future__ import annotations

import io

import pytest
import torch

from domainbed.lib.loss_valley import LossValley

# Worked by hand with n_converge=3, n_tolerance=6, tolerance_ratio=0.3:
# - calls 0-3: windows [5,4,3] and [4,3,3.5] have their minimum elsewhere than the oldest;
# - call 4: window of segments 2,3,4 = [3, 3.5, 3.8], oldest is lowest -> start;
#   threshold = (3 + 3.5 + 3.8) / 3 * 1.3 = 4.4633...;
# - calls 5-9 fill the pending buffer with segments 5..9;
# - call 10: pending 5..10 has min 3.0 <= threshold -> accept 5; call 11 -> accept 6;
# - call 12: pending 7..12 = [4.0, 4.5, 5.0, 5.5, 6.0, 6.5], min 4.0 -> accept 7;
# - call 13: pending 8..13 = [4.5, ..., 7.0], min 4.5 > 4.4633 -> the valley ends.
VALLEY_LOSSES = [5.0, 4.0, 3.0, 3.5, 3.8, 3.2, 3.0, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0]
VALLEY_THRESHOLD = (3.0 + 3.5 + 3.8) / 3 * 1.3
VALLEY_ACCEPTED = [2, 3, 4, 5, 6, 7]


def test_loss_valley_hand_worked_sequence() -> None:
    valley = LossValley(n_converge=3, n_tolerance=6, tolerance_ratio=0.3)
    events = [valley.update(loss) for loss in VALLEY_LOSSES]

    assert [e.segment for e in events] == list(range(14))
    assert [i for i, e in enumerate(events) if e.started] == [4]
    assert [i for i, e in enumerate(events) if e.ended] == [13]
    assert events[4].accepted == [2, 3, 4]
    assert valley.threshold == pytest.approx(VALLEY_THRESHOLD)
    assert {i: e.accepted for i, e in enumerate(events) if e.accepted} == {
        4: [2, 3, 4], 10: [5], 11: [6], 12: [7]
    }
    # Before the start, only segments that can still join a window are kept; after it,
    # everything older than the oldest pending segment is decided.
    assert [e.discard_before for e in events] == [0, 0, 1, 2, 5, 5, 5, 5, 5, 5, 6, 7, 8, 14]
    assert valley.accepted_segments == VALLEY_ACCEPTED
    assert valley.is_started and valley.is_ended

    late = valley.update(1.0)  # after the end: rejected, nothing changes
    assert late.accepted == [] and not late.started and not late.ended
    assert late.discard_before == 15
    assert valley.finish().accepted == []
    assert valley.accepted_segments == VALLEY_ACCEPTED


def test_loss_valley_never_starts_on_decreasing_losses() -> None:
    valley = LossValley(n_converge=3, n_tolerance=6, tolerance_ratio=0.3)
    events = [valley.update(10.0 - i) for i in range(10)]
    assert not any(e.started or e.ended or e.accepted for e in events)
    assert not valley.is_started and valley.threshold is None
    final = valley.finish()
    assert final.accepted == [] and final.discard_before == 10
    assert valley.accepted_segments == []


def test_loss_valley_finish_accepts_pending_under_threshold() -> None:
    valley = LossValley(n_converge=3, n_tolerance=6, tolerance_ratio=0.3)
    events = [valley.update(x) for x in [3.0, 3.5, 3.8, 5.0, 3.1, 4.0]]
    assert events[2].started and events[2].accepted == [0, 1, 2]
    # threshold 4.4633: pending 3 (5.0) is over it, 4 (3.1) and 5 (4.0) are under.
    final = valley.finish()
    assert final.accepted == [4, 5] and final.discard_before == 6
    assert valley.accepted_segments == [0, 1, 2, 4, 5]
    assert valley.finish().accepted == []  # idempotent
    with pytest.raises(ValueError, match="finish"):
        valley.update(1.0)


def test_loss_valley_ties_count_as_lowest_and_ratio_scales_threshold() -> None:
    valley = LossValley(n_converge=3, n_tolerance=2, tolerance_ratio=0.2)
    assert [valley.update(2.0).started for _ in range(3)] == [False, False, True]
    assert valley.threshold == pytest.approx(2.4)
    # n_tolerance=2: pending [2.5, 2.41] both over 2.4 -> end.
    assert not valley.update(2.5).ended
    assert valley.update(2.41).ended


def test_loss_valley_validates_arguments() -> None:
    good = {"n_converge": 3, "n_tolerance": 6, "tolerance_ratio": 0.3}
    for name, bad in (("n_converge", 0), ("n_tolerance", 0), ("tolerance_ratio", -0.1)):
        with pytest.raises(ValueError, match=name):
            LossValley(**{**good, name: bad})


def test_loss_valley_resumes_from_its_state_dict() -> None:
    """Stopped after 7 segments, saved as plain values and resumed, the detector makes
    the same decisions as one that was never interrupted."""
    whole = LossValley(n_converge=3, n_tolerance=6, tolerance_ratio=0.3)
    expected = [whole.update(loss) for loss in VALLEY_LOSSES]

    first = LossValley(n_converge=3, n_tolerance=6, tolerance_ratio=0.3)
    for loss in VALLEY_LOSSES[:7]:
        first.update(loss)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = LossValley(n_converge=3, n_tolerance=6, tolerance_ratio=0.3)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert [resumed.update(loss) for loss in VALLEY_LOSSES[7:]] == expected[7:]
    assert resumed.accepted_segments == VALLEY_ACCEPTED and resumed.is_ended
