"""Weight averaging for SWAD (domainbed/algorithms/swad/weight_averaging.py): means checked against
means of cloned snapshots, the accepted segments against the hand-worked loss sequence of
test_loss_valley.py, and the checkpoint format against a state written by hand."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from domainbed.algorithms.swad.weight_averaging import SegmentAverager, WeightAverager

# Hand-worked in test_loss_valley.py (n_converge=3, n_tolerance=6, tolerance_ratio=0.3):
# the valley starts at call 4 and ends at call 13; official adds segments 2, 3 at the start
# and then 2, 3, 4, 5, 6, 7 (one equal share each); paper takes 2..7, each step once.
VALLEY_LOSSES = [5.0, 4.0, 3.0, 3.5, 3.8, 3.2, 3.0, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0]
VALLEY_OFFICIAL = [2, 3, 2, 3, 4, 5, 6, 7]
VALLEY_PAPER = [2, 3, 4, 5, 6, 7]


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


def _round_trip(state: dict) -> dict:
    """Through torch.save and a weights_only load, as a checkpoint goes."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# ----------------------------------------------------------------------- WeightAverager


def test_weight_averager_mean_and_merge() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    first, second = WeightAverager(), WeightAverager()
    snaps = []
    for step in range(5):
        snaps.append(_set_weights(model, seed=step + 1))
        (first if step < 2 else second).add(model.state_dict())
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
    # The sums are copies: changing the model afterwards changes nothing.
    _set_weights(model, seed=99)
    torch.testing.assert_close(first.mean_state()["0.weight"].double(), _mean_of(snaps, "0.weight"), rtol=1e-6, atol=1e-6)


def test_weight_averager_add_mean_gives_each_average_one_share() -> None:
    """As SWAD's released code folds segment averages into a running mean."""
    short, long, total = WeightAverager(), WeightAverager(), WeightAverager()
    short.add({"w": torch.tensor([1.0]), "n": torch.tensor(1)})
    for v in (2.0, 4.0, 6.0):
        long.add({"w": torch.tensor([v]), "n": torch.tensor(int(v))})
    for part in (short, long, long):
        total.add_mean(part)
    # (1 + 4 + 4) / 3: the one-step segment weighs as much as the three-step one.
    assert total.count == 3 and total.mean_state()["w"].item() == pytest.approx(3.0)
    assert total.mean_state()["n"].item() == 6  # integer entries from the latest added
    total.add_mean(WeightAverager())  # an empty one adds nothing
    assert total.count == 3


def test_weight_averager_sums_half_precision_in_float32_and_checks_keys() -> None:
    model = nn.Linear(4, 3).to(torch.bfloat16)
    averager = WeightAverager()
    snaps = []
    for s in (1, 2, 3):
        snaps.append(_set_weights(model, seed=s))
        averager.add(model.state_dict())
    mean = averager.mean_state()
    # bf16 weights are summed in fp32, divided once and returned as bf16.
    assert mean["weight"].dtype == torch.bfloat16
    expected = torch.stack([s["weight"].float() for s in snaps]).mean(0).bfloat16()
    assert torch.equal(mean["weight"], expected)
    # float64 weights are summed in float64.
    wide = WeightAverager()
    for value in (1.0, 1e-12):
        wide.add({"w": torch.tensor([value], dtype=torch.float64)})
    assert wide.mean_state()["w"].item() == (1.0 + 1e-12) / 2

    with pytest.raises(ValueError, match="nothing"):
        WeightAverager().mean_state()
    with pytest.raises(ValueError, match="does not match"):
        averager.add(nn.Linear(5, 3).state_dict() | {"extra": torch.zeros(1)})


def test_weight_averager_sums_follow_the_device_of_the_added_weights() -> None:
    """A state loaded from a CPU checkpoint moves, once, to where training runs (the
    meta device stands in for an accelerator here; test_cuda covers none of this)."""
    averager = WeightAverager()
    averager.add({"w": torch.ones(2), "n": torch.tensor(1)})
    resumed = WeightAverager()
    resumed.load_state_dict(_round_trip(averager.state_dict()))
    resumed.add({"w": torch.ones(2, device="meta"), "n": torch.tensor(2, device="meta")})
    state = resumed.state_dict()
    assert state["sums"]["w"].device.type == "meta" and state["latest"]["n"].device.type == "meta"
    assert resumed.count == 2


# ---------------------------------------------------------------------- SegmentAverager


class _WithPrior(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)
        self.prior = nn.Linear(3, 2)


def _predictive_state(model: _WithPrior) -> dict[str, torch.Tensor]:
    """What SWAD averages: the state without the prior (as ``predictive_state()``)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("prior.")}


def _mean_of_segments(per_segment: list[list[dict[str, torch.Tensor]]], additions: list[int], key: str) -> torch.Tensor:
    """One equal share per addition: the mean of the added segments' means."""
    return torch.stack([_mean_of(per_segment[i], key) for i in additions]).mean(0)


@pytest.mark.parametrize("rule", ["official", "paper"])
def test_segment_averager_averages_exactly_the_accepted_segments(rule: str) -> None:
    model = _WithPrior()
    swad = SegmentAverager(n_converge=3, n_tolerance=6, tolerance_ratio=0.3, rule=rule)
    additions = VALLEY_OFFICIAL if rule == "official" else VALLEY_PAPER
    per_segment: list[list[dict[str, torch.Tensor]]] = []
    seed = 0
    for index, loss in enumerate(VALLEY_LOSSES):
        assert not swad.should_stop
        snaps = []
        for _ in range(index % 3 + 1):  # unequal segment lengths test count weighting
            seed += 1
            snaps.append(_set_weights(model, seed))
            swad.step(_predictive_state(model))
        per_segment.append(snaps)
        swad.end_segment(loss)
        # Only the segments the valley may still add are held (and checkpointed).
        assert len(swad.state_dict()["segments"]) <= 6
        assert swad.has_average == (index >= 4)
    assert swad.should_stop
    assert swad.valley.accepted_segments == additions

    before = {k: v.clone() for k, v in swad.averaged_state().items()}
    _set_weights(model, seed=999)
    swad.step(_predictive_state(model))  # after the end: ignored
    swad.finish()
    assert swad.state_dict()["segments"] == {} and not swad.is_fallback

    state = swad.averaged_state()
    accepted_steps = [s for i in additions for s in per_segment[i]]

    def expected(key: str) -> torch.Tensor:
        # official: equal shares per addition; paper: count-weighted (each step once).
        if rule == "official":
            return _mean_of_segments(per_segment, additions, key)
        return _mean_of(accepted_steps, key)

    assert list(state) == list(_predictive_state(model))
    for key in ("net.weight", "net.bias", "bn.weight", "bn.running_mean"):
        torch.testing.assert_close(state[key].double(), expected(key), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(state[key], before[key])
    # Integer buffers come from the newest accepted step (the last of segment 7).
    last_seed_of_segment_7 = sum(i % 3 + 1 for i in range(8))
    assert state["bn.num_batches_tracked"].item() == last_seed_of_segment_7

    prior_before = model.prior.weight.detach().clone()
    swad.load_into(model)
    assert torch.equal(model.prior.weight, prior_before)  # entries not averaged are left alone
    torch.testing.assert_close(model.net.weight.double(), expected("net.weight"), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="lacks"):
        swad.load_into(nn.Linear(3, 2))


def test_segment_averager_falls_back_to_last_segment_without_a_valley() -> None:
    model = nn.Linear(2, 2)
    swad = SegmentAverager(n_converge=3, n_tolerance=6, tolerance_ratio=0.3)
    seed = 0
    last: list[dict[str, torch.Tensor]] = []
    for index in range(5):
        last = []
        for _ in range(2):
            seed += 1
            last.append(_set_weights(model, seed))
            swad.step(model.state_dict())
        swad.end_segment(10.0 - index)
    assert not swad.has_average
    with pytest.raises(ValueError, match="no SWAD average"):
        swad.averaged_state()
    with pytest.raises(ValueError, match="no step"):
        swad.end_segment(1.0)
    swad.finish()
    assert swad.is_fallback and not swad.has_average
    torch.testing.assert_close(swad.averaged_state()["weight"].double(), _mean_of(last, "weight"))


def test_segment_averager_resumes_to_the_uninterrupted_average() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))

    def run(swad: SegmentAverager, segments: range) -> None:
        for index in segments:
            for step in range(2):
                _set_weights(model, seed=10 * index + step)
                swad.step(model.state_dict())
            swad.end_segment(VALLEY_LOSSES[index])

    first = SegmentAverager(n_converge=3, n_tolerance=6, tolerance_ratio=0.3)
    run(first, range(6))  # mid-valley: accepted, pending and open sums all non-empty
    _set_weights(model, seed=1000)
    first.step(model.state_dict())
    resumed = SegmentAverager(n_converge=3, n_tolerance=6, tolerance_ratio=0.3)
    resumed.load_state_dict(_round_trip(first.state_dict()))
    run(resumed, range(6, len(VALLEY_LOSSES)))

    uninterrupted = SegmentAverager(n_converge=3, n_tolerance=6, tolerance_ratio=0.3)
    run(uninterrupted, range(6))
    _set_weights(model, seed=1000)
    uninterrupted.step(model.state_dict())
    run(uninterrupted, range(6, len(VALLEY_LOSSES)))
    for swad in (uninterrupted, resumed):
        swad.finish()
    assert resumed.valley.accepted_segments == uninterrupted.valley.accepted_segments == VALLEY_OFFICIAL
    expected, got = uninterrupted.averaged_state(), resumed.averaged_state()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_segment_averager_loads_the_checkpoint_layout() -> None:
    """The SWAD state inside checkpoint.pt, written out by hand in the layout it is saved
    in: n_converge=1, n_tolerance=2, after segment 0 (weights w=[1,2], [3,4]; loss 1.0, so
    the valley starts at once with k=0, threshold 1.3; official adds nothing yet: of the
    first 2 watched segments only 0 exists, and the first is left out) and one step w=[5,6]
    of segment 1. A state of the earlier rule (before swad_rule) is refused by name."""
    def sums(count: int, w: list[float], n: int) -> dict:
        return {"count": count, "order": ["w", "n"], "sums": {"w": torch.tensor(w)},
                "latest": {"n": torch.tensor(n)}, "dtypes": {"w": "float32", "n": "int64"}}

    empty = {"count": 0, "order": [], "sums": {}, "latest": {}, "dtypes": {}}
    saved = {
        "valley": {"rule": "official", "n_segments": 1, "window": [], "watch": [[0, 1.0]], "tail": [],
                   "start": 0, "threshold": 1.3, "ended": False, "finished": False, "accepted": []},
        "final": empty, "current": sums(1, [5.0, 6.0], 5), "segments": {"0": sums(2, [4.0, 6.0], 3)},
        "last_closed": sums(2, [4.0, 6.0], 3), "finished": False,
    }
    swad = SegmentAverager(n_converge=1, n_tolerance=2, tolerance_ratio=0.3)
    swad.load_state_dict(_round_trip(saved))
    swad.step({"w": torch.tensor([7.0, 8.0]), "n": torch.tensor(7)})
    swad.end_segment(1.0)  # watch [0, 1] starts at k, min 1.0 <= 1.3: adds 0
    swad.finish()  # drops 0, adds 1 (1.0 <= 1.3)
    state = swad.averaged_state()
    # Segment means (2, 3) and (6, 7), one share each.
    assert state["w"].tolist() == [4.0, 5.0] and state["n"].item() == 7
    assert swad.valley.accepted_segments == [0, 1]
    assert set(swad.state_dict()) == set(saved)
    assert set(swad.state_dict()["final"]) == set(sums(1, [0.0], 0))
    assert set(swad.state_dict()["valley"]) == set(saved["valley"])

    earlier = {**saved, "valley": {"n_segments": 1, "window": [], "pending": [], "threshold": 1.3,
                                   "ended": False, "finished": False, "accepted": [0]}}
    with pytest.raises(ValueError, match="earlier loss-valley rule"):
        SegmentAverager(n_converge=1, n_tolerance=2, tolerance_ratio=0.3).load_state_dict(_round_trip(earlier))
