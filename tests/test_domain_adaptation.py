"""``--task domain_adaptation``: DomainBed's unlabeled split of each test domain, its batches
passed to ``update(minibatches, unlabeled)``, ``env{i}_uda_acc`` in the records, and model
selection unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from domainbed.algorithms import register_algorithm
from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import ALGORITHMS
from domainbed.datasets import build_dataset
from domainbed.datasets.splits import in_out_split, uda_split
from domainbed.lib.query import Q
from domainbed.lib.seeding import seed_hash
from domainbed.model_selection import IIDAccuracySelectionMethod, OracleSelectionMethod
from domainbed.scripts import train

PROBE = "UnlabeledProbeForTest"


@pytest.fixture
def probe():
    """An ERM that records what each ``update`` received as ``unlabeled``."""

    class Probe(ERM):
        calls: list[list[torch.Tensor] | None] = []

        def update(self, minibatches, unlabeled=None):
            type(self).calls.append(None if unlabeled is None else [u.detach().cpu().clone() for u in unlabeled])
            return super().update(minibatches, unlabeled)

    Probe.__name__ = PROBE
    register_algorithm(Probe)
    try:
        yield Probe
    finally:
        ALGORITHMS._items.pop(PROBE, None)


def _train(out: Path, *extra: str, algorithm: str = "ERM") -> list[dict]:
    train.main(["--dataset", "Debug28", "--algorithm", algorithm, "--output_dir", str(out), "--steps", "3",
                "--checkpoint_freq", "2", "--hparams", '{"batch_size": 4}', "--skip_model_save", *extra])
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _rows(split) -> set[bytes]:
    return {split[i][0].numpy().tobytes() for i in range(len(split))}


def test_unlabeled_batches_reach_update_from_the_test_domains_uda_split(tmp_path, probe):
    _train(tmp_path / "da", "--task", "domain_adaptation", "--uda_holdout_fraction", "0.2", "--test_envs", "1",
           "--trial_seed", "3", algorithm=PROBE)
    assert len(probe.calls) == 3
    env = build_dataset("Debug28", None, [1], {}).datasets[1]
    in_, out = in_out_split(env, 1, 3, 0.2)
    in_, uda = uda_split(in_, 1, 3, 0.2)
    assert (len(uda), len(in_), len(out)) == (5, 21, 6)  # int(26 * 0.2) of the 26 not held out
    uda_rows, other_rows = _rows(uda), _rows(in_) | _rows(out)
    for unlabeled in probe.calls:
        assert isinstance(unlabeled, list) and len(unlabeled) == 1  # one batch per test domain
        assert unlabeled[0].shape == (4, 3, 28, 28)  # inputs only, batch_size of them
        for x in unlabeled[0]:
            assert x.numpy().tobytes() in uda_rows and x.numpy().tobytes() not in other_rows


def test_domain_generalization_passes_no_unlabeled_batches_but_makes_the_same_splits(tmp_path, probe):
    records = _train(tmp_path / "dg", "--uda_holdout_fraction", "0.2", "--test_envs", "1", algorithm=PROBE)
    assert probe.calls == [None, None, None]
    # As DomainBed: the unlabeled split is held out and evaluated for both tasks.
    assert all("env1_uda_acc" in r for r in records)


def test_domain_adaptation_end_to_end_records_uda_accuracy(tmp_path):
    out = tmp_path / "da"
    records = _train(out, "--task", "domain_adaptation", "--uda_holdout_fraction", "0.2", "--test_envs", "0", "2")
    assert (out / "done").exists() and [r["step"] for r in records] == [0, 2]
    for r in records:
        assert r["args"]["task"] == "domain_adaptation" and r["args"]["uda_holdout_fraction"] == 0.2
        for i in (0, 2):  # keyed by the test env's index
            assert 0.0 <= r[f"env{i}_uda_acc"] <= 1.0
        assert "env1_uda_acc" not in r and "env1_in_acc" in r


def test_uda_split_is_domainbeds_by_hand():
    env = build_dataset("Debug28", None, [0], {}).datasets[2]
    in_, _ = in_out_split(env, 2, 7, 0.2)
    rest, uda = uda_split(in_, 2, 7, 0.25)
    keys = np.arange(len(in_))
    np.random.RandomState(seed_hash(7, 2)).shuffle(keys)
    n = int(len(in_) * 0.25)
    assert list(uda.indices) == keys[:n].tolist() and list(rest.indices) == keys[n:].tolist()


def test_model_selection_ignores_the_uda_keys(tmp_path):
    records = Q(_train(tmp_path / "da", "--task", "domain_adaptation", "--uda_holdout_fraction", "0.2",
                       "--test_envs", "1"))
    stripped = records.map(lambda r: {k: v for k, v in r.items() if "_uda_" not in k})
    for method in (IIDAccuracySelectionMethod, OracleSelectionMethod):
        assert method.run_acc(records) == method.run_acc(stripped) is not None
    assert OracleSelectionMethod.sweep_acc(records) == records[-1]["env1_in_acc"]  # the last step's test in split


@pytest.mark.parametrize("argv, message", [
    (["--task", "domain_adaptation"], "pass --uda_holdout_fraction above 0"),
    (["--task", "domain_adaptation", "--uda_holdout_fraction", "0.01"], "have no unlabeled examples"),
    (["--uda_holdout_fraction", "1.0"], "--uda_holdout_fraction must be in [0, 1)"),
])
def test_bad_domain_adaptation_arguments_are_user_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        _train(tmp_path / "bad", *argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err
