"""Recomputing BatchNorm statistics of an averaged model (domainbed/algorithms/swad/batchnorm.py):
checked against batch statistics computed by hand and against torch's own update_bn."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from domainbed.algorithms.swad.batchnorm import recompute_bn


def test_recompute_bn_gives_equal_weight_batch_statistics_with_dropout_off() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Dropout(0.5), nn.Linear(3, 4), nn.BatchNorm1d(4))
    model.train()
    model[1].eval()  # a submodule in its own mode: restored as it was
    batches = [torch.randn(8, 3) * (i + 1) for i in range(5)]
    with torch.no_grad():
        feats = [model[1](x) for x in batches[:3]]
    expected_mean = torch.stack([f.mean(0) for f in feats]).mean(0)
    expected_var = torch.stack([f.var(0, unbiased=True) for f in feats]).mean(0)

    used = recompute_bn(model, itertools.cycle(batches), n_batches=3)  # an endless loader
    bn = model[2]
    assert used == 3 and bn.num_batches_tracked.item() == 3
    # Dropout was off while collecting statistics, so they are exact.
    torch.testing.assert_close(bn.running_mean, expected_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, expected_var, rtol=1e-5, atol=1e-6)
    assert model.training and model[0].training and bn.training and bn.momentum == 0.1
    assert not model[1].training

    # Fewer batches than asked for: all of them are used.
    model.eval()
    assert recompute_bn(model, batches[:1], n_batches=10) == 1
    torch.testing.assert_close(bn.running_mean, feats[0].mean(0), rtol=1e-5, atol=1e-6)
    assert not model.training and not bn.training


def test_recompute_bn_matches_torch_update_bn_without_dropout() -> None:
    torch.manual_seed(1)
    ours = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 4), nn.BatchNorm1d(4))
    theirs = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 4), nn.BatchNorm1d(4))
    theirs.load_state_dict(ours.state_dict())
    batches = [torch.randn(6, 3) + i for i in range(7)]
    assert recompute_bn(ours, iter(batches), n_batches=4) == 4
    update_bn(batches[:4], theirs)
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=1e-6, atol=1e-7, msg=key)


def test_recompute_bn_rejects_empty_input_and_skips_models_without_bn() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    kept = model[1].running_mean.clone()
    with pytest.raises(ValueError, match="no batches"):
        recompute_bn(model, [], n_batches=1)
    assert torch.equal(model[1].running_mean, kept)
    with pytest.raises(ValueError, match="n_batches"):
        recompute_bn(model, [torch.randn(2, 3)], n_batches=0)
    assert recompute_bn(nn.Linear(2, 2), [torch.randn(2, 2)], n_batches=1) == 0
