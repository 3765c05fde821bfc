"""SWAD's loss-valley rules (domainbed/algorithms/swad/loss_valley.py, arXiv 2102.08604) on loss
sequences worked by hand.

Every expectation below was derived on paper from the rules as the module states them, not
read back from the implementation. n_converge=3, n_tolerance=6, tolerance_ratio=0.3 (SWAD's
defaults) unless a test says otherwise. Segment 0 is one step (DomainBed evaluates at step
0), every other segment 100 steps.

``official`` (the released code's bookkeeping), in short: at the start, of the first 4
watched segments it adds those after the segment following the latest one above the
threshold (all but the first if none is); then each evaluation whose 6-segment watch window
starts at the valley's first segment k or later adds that oldest watched segment (again);
at the end of training it drops the oldest watched segment and adds the rest in order while
the lowest loss from there on is under the threshold. Each addition is one equal share.
``paper``: from k to the end of the valley, each segment once, each step one share.
"""

from __future__ import annotations

import io

import pytest
import torch

from domainbed.algorithms.swad.loss_valley import LossValley
from domainbed.algorithms.swad.weight_averaging import SegmentAverager

STEPS = [1] + [100] * 30  # steps per segment

# name: (losses, segment where the valley ends or None, official weights, paper weights);
# weights None: the valley never starts (SWAD then falls back to the last segment).
CASES = {
    # Every window of three is falling: the oldest is never the lowest.
    "monotone_down": ([10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0], None, None, None),
    # Fewer segments than the start window.
    "too_short": ([2.0, 1.0], None, None, None),
    # Call 2: window [1.0, 1.1, 1.2] -> k=0, threshold 1.1 x 1.3 = 1.43. Watched so far
    # 0,1,2, none above -> official adds 1, 2. Calls 3,4,5: watch 0.. starts at k -> adds 0
    # three times. Call 6: 1; call 7: 2; call 8 (watch 3..8, min 1.3): 3. End of training:
    # drop 3; rest 4..8 has min 1.4 -> add 4; rest 5..8 min 2.0 > 1.43 -> stop.
    # Additions 1,2,0,0,0,1,2,3,4: 3/9, 2/9, 2/9, 1/9, 1/9. paper: 0..4, segment 0 one step.
    "monotone_up": (
        [1.0, 1.1, 1.2, 1.3, 1.4, 2.0, 2.5, 3.0, 3.5], None,
        {0: 3 / 9, 1: 2 / 9, 2: 2 / 9, 3: 1 / 9, 4: 1 / 9},
        {0: 1 / 401, 1: 100 / 401, 2: 100 / 401, 3: 100 / 401, 4: 100 / 401},
    ),
    # Call 10: window [1.0, 1.2, 1.4] -> k=8, threshold 1.2 x 1.3 = 1.56. First 4 watched:
    # 5,6,7,8 = [2.5, 2.0, 1.5, 1.0]; latest above is 6 -> skip 7 -> add 8. Calls 11, 12:
    # watch starts at 6, 7 (< k). Calls 13..16 add 8, 9, 10, 11 (mins 1.0, 1.2, 1.4, 1.5).
    # Call 17: watch 12..17 = [2.0 .. 4.5] all above -> the valley ends.
    # Additions 8,8,9,10,11. paper: 8..11.
    "valley": (
        [5.0, 4.5, 4.0, 3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 1.2, 1.4, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5], 17,
        {8: 0.4, 9: 0.2, 10: 0.2, 11: 0.2},
        {8: 0.25, 9: 0.25, 10: 0.25, 11: 0.25},
    ),
    # Call 6: window [2.0, 2.1, 2.3] -> k=4, threshold 6.4/3 x 1.3 = 2.7733. First 4 watched:
    # 1..4 = [2.6, 2.2, 2.4, 2.0], none above -> add 2, 3, 4. Calls 7, 8: watch starts at 2,
    # 3 (< k). Calls 9, 10, 11 add 4, 5, 6 (min 1.9 in each). End of training: drop 6; rest
    # 7..11 = [1.9, 2.6, 2.2, 3.2, 2.4] -> add 7, 8, 9, then 10 (3.2, above, but 11's 2.4
    # follows), 11. Additions 2,3,4,4,5,...,11 (11 of them). paper: 4..11.
    "noisy_valley": (
        [3.0, 2.6, 2.2, 2.4, 2.0, 2.1, 2.3, 1.9, 2.6, 2.2, 3.2, 2.4], None,
        {2: 1 / 11, 3: 1 / 11, 4: 2 / 11, **{i: 1 / 11 for i in range(5, 12)}},
        {i: 1 / 8 for i in range(4, 12)},
    ),
    # Call 4: window [2.0, 2.0, 2.0] (ties count as lowest) -> k=2, threshold 2.6. Only 0..4
    # are watched: the first 4 are 0..3 = [3.0, 2.5, 2.0, 2.0]; latest above is 0 -> skip 1
    # -> add 2, 3. Calls 5, 6: watch starts at 0, 1. Calls 7..11 add 2, 3, 4, 5, 6. End of
    # training: drop 6, add 7..11. Additions 2,3,2,3,4,...,11 (12). paper: 2..11.
    "flat_valley": (
        [3.0, 2.5] + [2.0] * 10, None,
        {2: 2 / 12, 3: 2 / 12, **{i: 1 / 12 for i in range(4, 12)}},
        {i: 0.1 for i in range(2, 12)},
    ),
    # Call 8: window [2.0, 2.05, 2.1] -> k=6, threshold 2.05 x 1.3 = 2.665. First 4 watched:
    # 3..6 = [2.4, 2.2, 2.1, 2.0], none above -> add 4, 5, 6. Calls 9, 10 skip. Calls 11..17
    # add 6, 7, 8, 9 (the spike: watch 9..14 has min 2.1), 10, 11, 12. Call 18: watch
    # 13..18 all above -> ends. Additions 4,5,6,6,7,...,12. paper: 6..12.
    "spike_in_valley": (
        [5.0, 4.0, 3.0, 2.4, 2.2, 2.1, 2.0, 2.05, 2.1, 4.0, 2.1, 2.2, 2.3, 3.5, 3.6, 3.7, 3.8, 3.9, 4.0], 18,
        {4: 0.1, 5: 0.1, 6: 0.2, **{i: 0.1 for i in range(7, 13)}},
        {i: 1 / 7 for i in range(6, 13)},
    ),
}


def _run(losses: list[float], rule: str) -> tuple[LossValley, int | None]:
    valley = LossValley(n_converge=3, n_tolerance=6, tolerance_ratio=0.3, rule=rule)
    for index, loss in enumerate(losses):
        if valley.update(loss).ended:
            valley.finish()
            return valley, index
    valley.finish()
    return valley, None


@pytest.mark.parametrize("rule", ["official", "paper"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_segments_and_weights_match_the_hand_worked_cases(name: str, rule: str) -> None:
    losses, end, official, paper = CASES[name]
    expected = official if rule == "official" else paper
    valley, ended_at = _run(losses, rule)
    assert ended_at == end  # both rules stop at the same segment
    if expected is None:
        assert not valley.is_started and valley.accepted_segments == []
        return
    weights = valley.segment_weights(STEPS)
    assert weights == pytest.approx(expected)
    assert set(weights) == set(expected)


@pytest.mark.parametrize("rule", ["official", "paper"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_segment_averager_applies_those_weights(name: str, rule: str) -> None:
    """The averaged weights are the hand-worked mix of the segment means (each segment's
    steps hold distinct values; a valley that never starts gives the last segment)."""
    losses, _, official, paper = CASES[name]
    expected = (official if rule == "official" else paper) or {len(losses) - 1: 1.0}
    swad = SegmentAverager(n_converge=3, n_tolerance=6, tolerance_ratio=0.3, rule=rule)
    means = []
    for index, loss in enumerate(losses):
        values = [float(index) + 0.01 * s for s in range(STEPS[index])]
        for v in values:
            swad.step({"w": torch.tensor([v], dtype=torch.float64)})
        means.append(sum(values) / len(values))
        swad.end_segment(loss)
        if swad.should_stop:
            break
    swad.finish()
    want = sum(weight * means[i] for i, weight in expected.items())
    assert swad.averaged_state()["w"].item() == pytest.approx(want, rel=1e-12)
    assert swad.is_fallback == ((official if rule == "official" else paper) is None)


# The sequence the weight-averaging tests share (tests/test_weight_averaging.py).
# Call 4: window [3, 3.5, 3.8] -> k=2, threshold 10.3/3 x 1.3 = 4.4633. Watched 0..4, first
# 4 = [5, 4, 3, 3.5]: latest above is 0 -> add 2, 3. Calls 5, 6 skip (watch from 0, 1).
# Calls 7..12 add 2..7 (watch 7..12 still has 4.0). Call 13: watch 8..13 from 4.5 -> ends.
VALLEY_LOSSES = [5.0, 4.0, 3.0, 3.5, 3.8, 3.2, 3.0, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0]
VALLEY_THRESHOLD = (3.0 + 3.5 + 3.8) / 3 * 1.3
VALLEY_OFFICIAL = [2, 3, 2, 3, 4, 5, 6, 7]


def test_official_events_on_the_shared_sequence() -> None:
    valley = LossValley(n_converge=3, n_tolerance=6, tolerance_ratio=0.3)
    events = [valley.update(loss) for loss in VALLEY_LOSSES]
    assert [e.segment for e in events] == list(range(14))
    assert [i for i, e in enumerate(events) if e.started] == [4]
    assert [i for i, e in enumerate(events) if e.ended] == [13]
    assert valley.threshold == pytest.approx(VALLEY_THRESHOLD) and valley.start_segment == 2
    assert {i: e.accepted for i, e in enumerate(events) if e.accepted} == {
        4: [2, 3], 7: [2], 8: [3], 9: [4], 10: [5], 11: [6], 12: [7]
    }
    # Only the watched segments (the last 6) can still be added: the oldest of them bounds
    # what is kept; after the end nothing is.
    assert [e.discard_before for e in events] == [0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 14]
    assert valley.accepted_segments == VALLEY_OFFICIAL and valley.is_ended

    late = valley.update(1.0)  # after the end: rejected, nothing changes
    assert late.accepted == [] and not late.started and not late.ended
    assert late.discard_before == 15
    assert valley.finish().accepted == []
    assert valley.accepted_segments == VALLEY_OFFICIAL


def test_paper_rule_on_the_shared_sequence_takes_each_segment_once() -> None:
    valley = LossValley(n_converge=3, n_tolerance=6, tolerance_ratio=0.3, rule="paper")
    events = [valley.update(loss) for loss in VALLEY_LOSSES]
    assert {i: e.accepted for i, e in enumerate(events) if e.accepted} == {
        4: [2], 8: [3], 9: [4], 10: [5], 11: [6], 12: [7]
    }
    assert events[13].ended and valley.accepted_segments == [2, 3, 4, 5, 6, 7]


def test_end_of_training_rule_is_a_contiguous_run() -> None:
    """[3.0, 3.5, 3.8, 5.0, 3.1, 4.0]: k=0 at call 2, threshold 4.4633; official adds 1, 2
    at the start and 0 at calls 3, 4, 5 (watch 0..); at the end it drops 0 and adds 1..5,
    3 (5.0, above) included because 4 (3.1) follows. paper: 0..5."""
    losses = [3.0, 3.5, 3.8, 5.0, 3.1, 4.0]
    for rule, expected in (("official", [1, 2, 0, 0, 0, 1, 2, 3, 4, 5]), ("paper", [0, 1, 2, 3, 4, 5])):
        valley = LossValley(n_converge=3, n_tolerance=6, tolerance_ratio=0.3, rule=rule)
        events = [valley.update(x) for x in losses]
        assert events[2].started
        final = valley.finish()
        assert final.discard_before == 6 and valley.accepted_segments == expected, rule
        assert valley.finish().accepted == []  # idempotent
        with pytest.raises(ValueError, match="finish"):
            valley.update(1.0)


def test_ties_count_as_lowest_and_ratio_scales_threshold() -> None:
    valley = LossValley(n_converge=3, n_tolerance=2, tolerance_ratio=0.2)
    assert [valley.update(2.0).started for _ in range(3)] == [False, False, True]
    assert valley.threshold == pytest.approx(2.4)
    # n_tolerance < n_converge: official adds the n_converge - n_tolerance = 1 segment after k.
    assert valley.accepted_segments == [1]
    # watch [2.0, 2.5] has 2.0 -> add its oldest (2); then [2.5, 2.41] both over 2.4 -> end.
    assert not valley.update(2.5).ended
    assert valley.update(2.41).ended
    assert valley.accepted_segments == [1, 2]


def test_equal_windows_add_nothing_at_the_start_and_fall_back_to_k() -> None:
    """n_converge = n_tolerance = 2, [1.0, 1.2, 5.0, 6.0]: k=0 at call 1, threshold 1.43;
    official adds nothing at the start; call 2 watches 1, 2 (min 1.2) -> adds 1; with the
    valley ending at call 3 (5.0, 6.0) the average is segment 1 alone. With [1.0, 2.0]
    (threshold 1.95) and the end of training right after the start, the end-of-training rule
    drops 0 and finds 2.0 above: nothing was added, so the average is k = 0."""
    valley = LossValley(n_converge=2, n_tolerance=2, tolerance_ratio=0.3)
    assert [valley.update(x).ended for x in (1.0, 1.2, 5.0, 6.0)] == [False, False, False, True]
    assert valley.accepted_segments == [1]
    short = LossValley(n_converge=2, n_tolerance=2, tolerance_ratio=0.3)
    short.update(1.0)
    short.update(2.0)
    assert short.accepted_segments == [] and short.finish().accepted == [0]


def test_loss_valley_validates_arguments() -> None:
    good = {"n_converge": 3, "n_tolerance": 6, "tolerance_ratio": 0.3}
    for name, bad in (("n_converge", 0), ("n_tolerance", 0), ("tolerance_ratio", -0.1), ("rule", "mine")):
        with pytest.raises(ValueError, match=name):
            LossValley(**{**good, name: bad})


@pytest.mark.parametrize("rule", ["official", "paper"])
def test_loss_valley_resumes_from_its_state_dict(rule: str) -> None:
    """Stopped after 7 segments, saved as plain values and resumed, the detector makes
    the same decisions as one that was never interrupted."""
    whole = LossValley(n_converge=3, n_tolerance=6, tolerance_ratio=0.3, rule=rule)
    expected = [whole.update(loss) for loss in VALLEY_LOSSES]

    first = LossValley(n_converge=3, n_tolerance=6, tolerance_ratio=0.3, rule=rule)
    for loss in VALLEY_LOSSES[:7]:
        first.update(loss)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = LossValley(n_converge=3, n_tolerance=6, tolerance_ratio=0.3, rule=rule)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert [resumed.update(loss) for loss in VALLEY_LOSSES[7:]] == expected[7:]
    assert resumed.accepted_segments == whole.accepted_segments and resumed.is_ended

    other = LossValley(n_converge=3, n_tolerance=6, tolerance_ratio=0.3,
                       rule="paper" if rule == "official" else "official")
    with pytest.raises(ValueError, match="swad_rule"):
        other.load_state_dict(first.state_dict())


def test_state_of_the_earlier_rule_is_refused() -> None:
    earlier = {"n_segments": 1, "window": [], "pending": [], "threshold": 1.3,
               "ended": False, "finished": False, "accepted": [0]}
    with pytest.raises(ValueError, match="earlier loss-valley rule"):
        LossValley(n_converge=1, n_tolerance=2, tolerance_ratio=0.3).load_state_dict(earlier)
