"""Tests of SWAD's functional core (domainbed/lib/swad.py): the loss-valley rule on
hand-worked loss sequences, and weight averaging against means computed from clones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from domainbed.lib.swad import LossValley, SegmentAverager, WeightAverager, recompute_bn

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


# -------------------------------------------------------------------------- LossValley


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
    valley = LossValley()
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
    for kwargs in ({"n_converge": 0}, {"n_tolerance": 0}, {"tolerance_ratio": -0.1}):
        with pytest.raises(ValueError):
            LossValley(**kwargs)


# ----------------------------------------------------------------------- WeightAverager


def _set_weights(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Give every float entry of the model a fresh random value; return clones."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.randn(value.shape, generator=gen))
            else:
                value.fill_(seed)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _mean_of(snapshots: list[dict[str, torch.Tensor]], key: str) -> torch.Tensor:
    return torch.stack([s[key].double() for s in snapshots]).mean(0)


def test_weight_averager_mean_and_merge() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    first, second = WeightAverager(), WeightAverager()
    snaps = []
    for step in range(5):
        snaps.append(_set_weights(model, seed=step + 1))
        (first if step < 2 else second).add(model)
    assert (first.count, second.count) == (2, 3)

    for key in ("0.weight", "0.bias", "1.weight", "1.running_mean", "1.running_var"):
        torch.testing.assert_close(first.mean_state()[key].double(), _mean_of(snaps[:2], key))
        torch.testing.assert_close(second.mean_state()[key].double(), _mean_of(snaps[2:], key))

    first.merge(second)
    merged = first.mean_state()
    assert first.count == 5 and list(merged) == list(model.state_dict())
    for key in ("0.weight", "0.bias", "1.running_var"):
        # Count-weighted: the mean over all five steps, not the mean of the two means.
        torch.testing.assert_close(merged[key].double(), _mean_of(snaps, key), rtol=1e-6, atol=1e-6)
    # Integer buffers are copied from the latest state, not averaged.
    assert merged["1.num_batches_tracked"].item() == 5
    assert merged["1.num_batches_tracked"].dtype == torch.long

    fresh = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    first.load_into(fresh)
    torch.testing.assert_close(fresh[0].weight.double(), _mean_of(snaps, "0.weight"), rtol=1e-6, atol=1e-6)


def test_weight_averager_keeps_dtypes_filters_keys_and_checks_input() -> None:
    model = nn.Linear(4, 3).to(torch.bfloat16)
    averager = WeightAverager(include=lambda k: k != "bias", device="cpu")
    snaps = []
    for s in (1, 2, 3):
        snaps.append(_set_weights(model, seed=s))
        averager.add(model)
    mean = averager.mean_state()
    # Filtered keys are absent; bf16 weights are summed in fp32 and returned as bf16.
    assert list(mean) == ["weight"] and mean["weight"].dtype == torch.bfloat16
    expected = torch.stack([s["weight"].float() for s in snaps]).mean(0).bfloat16()
    assert torch.equal(mean["weight"], expected)

    with pytest.raises(ValueError, match="nothing"):
        WeightAverager().mean_state()
    with pytest.raises(ValueError, match="does not match"):
        averager.add(nn.Linear(5, 3).state_dict() | {"extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="nn.Module"):
        averager.add([1, 2, 3])  # type: ignore[arg-type]


# ---------------------------------------------------------------------- SegmentAverager


class _WithPrior(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)
        self.prior = nn.Linear(3, 2)


def test_segment_averager_averages_exactly_the_accepted_segments() -> None:
    model = _WithPrior()
    swad = SegmentAverager(
        n_converge=3, n_tolerance=6, tolerance_ratio=0.3, keys=lambda k: not k.startswith("prior.")
    )
    per_segment: list[list[dict[str, torch.Tensor]]] = []
    seed = 0
    for index, loss in enumerate(VALLEY_LOSSES):
        assert not swad.should_stop
        snaps = []
        for _ in range(index % 3 + 1):  # unequal segment lengths test count weighting
            seed += 1
            snaps.append(_set_weights(model, seed))
            swad.step(model)
        per_segment.append(snaps)
        swad.end_segment(loss)
        assert swad.n_live_segments <= 6
        assert swad.has_average == (index >= 4)
    assert swad.should_stop
    assert swad.valley.accepted_segments == VALLEY_ACCEPTED

    before = {k: v.clone() for k, v in swad.averaged_state().items()}
    _set_weights(model, seed=999)
    swad.step(model)  # after the end: ignored
    swad.finish()
    assert swad.n_live_segments == 0 and not swad.is_fallback

    state = swad.averaged_state()
    accepted_steps = [s for i in VALLEY_ACCEPTED for s in per_segment[i]]
    assert swad.n_averaged_steps == len(accepted_steps) == sum(i % 3 + 1 for i in VALLEY_ACCEPTED)
    assert not any(k.startswith("prior.") for k in state)
    for key in ("net.weight", "net.bias", "bn.weight", "bn.running_mean"):
        torch.testing.assert_close(state[key].double(), _mean_of(accepted_steps, key), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(state[key], before[key])
    # Integer buffers come from the newest accepted step (the last of segment 7).
    last_seed_of_segment_7 = sum(i % 3 + 1 for i in range(8))
    assert state["bn.num_batches_tracked"].item() == last_seed_of_segment_7

    prior_before = model.prior.weight.detach().clone()
    swad.load_into(model)
    assert torch.equal(model.prior.weight, prior_before)  # excluded keys are left alone
    torch.testing.assert_close(
        model.net.weight.double(), _mean_of(accepted_steps, "net.weight"), rtol=1e-6, atol=1e-6
    )


def test_segment_averager_falls_back_to_last_segment_without_a_valley() -> None:
    model = nn.Linear(2, 2)
    swad = SegmentAverager()
    seed = 0
    last: list[dict[str, torch.Tensor]] = []
    for index in range(5):
        last = []
        for _ in range(2):
            seed += 1
            last.append(_set_weights(model, seed))
            swad.step(model)
        swad.end_segment(10.0 - index)
    assert not swad.has_average
    with pytest.raises(ValueError, match="no SWAD average"):
        swad.averaged_state()
    with pytest.raises(ValueError, match="no step"):
        swad.end_segment(1.0)
    swad.finish()
    assert swad.is_fallback and not swad.has_average
    torch.testing.assert_close(swad.averaged_state()["weight"].double(), _mean_of(last, "weight"))


# --------------------------------------------------------------------------- recompute_bn


def test_recompute_bn_gives_equal_weight_batch_statistics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Dropout(0.5), nn.Linear(3, 4), nn.BatchNorm1d(4))
    model.train()
    batches = [(torch.randn(8, 3) * (i + 1), torch.zeros(8)) for i in range(5)]
    with torch.no_grad():
        feats = [model[1](x) for x, _ in batches[:3]]
    expected_mean = torch.stack([f.mean(0) for f in feats]).mean(0)
    expected_var = torch.stack([f.var(0, unbiased=True) for f in feats]).mean(0)

    used = recompute_bn(model, iter(batches), n_batches=3)
    bn = model[2]
    assert used == 3 and bn.num_batches_tracked.item() == 3
    # Dropout was off while collecting statistics, so they are exact.
    torch.testing.assert_close(bn.running_mean, expected_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, expected_var, rtol=1e-5, atol=1e-6)
    assert model.training and model[0].training and bn.training and bn.momentum == 0.1

    # A list of (x, y) per domain is concatenated; an empty loader changes nothing.
    pairs = [[(torch.randn(4, 3), None), (torch.randn(4, 3), None)]]
    model.eval()
    with torch.no_grad():
        both = model[1](torch.cat([p[0] for p in pairs[0]]))
    assert recompute_bn(model, pairs, n_batches=10) == 1
    torch.testing.assert_close(bn.running_mean, both.mean(0), rtol=1e-5, atol=1e-6)
    assert not model.training and not bn.training
    kept = bn.running_mean.clone()
    with pytest.raises(ValueError, match="no batches"):
        recompute_bn(model, [], n_batches=1)
    assert torch.equal(bn.running_mean, kept)
    assert recompute_bn(nn.Linear(2, 2), [torch.randn(2, 2)], n_batches=1) == 0
