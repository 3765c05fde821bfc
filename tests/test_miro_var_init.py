"""MIRO's ``miro_var_init`` option: the learned per-channel variance starts at the prior's
measured per-channel feature variance (``prior``) or at MIRO's published 0.1 (default)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from domainbed import hparams_registry
from domainbed.algorithms import get_algorithm_class
from domainbed.algorithms.ftlp.config import FTLPConfig
from domainbed.lib.errors import UserError


def miro(data, backbone: dict, **overrides):
    torch.manual_seed(0)
    h = {**hparams_registry.default_hparams("MIRO", "Debug28"), "batch_size": 8, **backbone, **overrides}
    return get_algorithm_class("MIRO")(data.input_shape, data.num_classes, 2, h).setup("cpu")


def first_step_variances(alg, minibatches) -> list[torch.Tensor]:
    """The learned variances right after the first step's loss (before any optimizer step)."""
    alg.train()
    alg.compute_loss(minibatches)
    return [(F.softplus(alg.prior_kl.get_parameter(f"raw_var_q{i}")) + 1e-5).detach() for i in range(len(alg.prior_kl))]


BACKBONES = {
    "efficientnet_lite0": {"backbone": "efficientnet_lite0", "pretrained": True, "freeze_bn": True},
    "mnist_cnn": {"backbone": "mnist_cnn", "pretrained": False},
}


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_prior_option_starts_at_the_measured_per_channel_variance(debug28, backbone):
    minibatches = [(debug28[i].x[:8], debug28[i].y[:8]) for i in (1, 2)]
    x = torch.cat([b[0] for b in minibatches])
    alg = miro(debug28, BACKBONES[backbone], miro_var_init="prior")
    # Measured independently: the frozen prior's stem/stage features of the first batch, in the
    # BatchNorm mode training gives it, and torch.var over images and positions with ddof 0.
    prior = alg.prior_network
    for mine, theirs in zip(alg.featurizer.train().modules(), prior.modules()):
        if isinstance(mine, torch.nn.modules.batchnorm._BatchNorm):
            theirs.training = mine.training
    with torch.no_grad():
        feats = prior.forward_features(x, intermediates=True).intermediates
    start = first_step_variances(alg, minibatches)
    assert len(start) == len(feats) > 1
    unfloored = 0
    for var, f in zip(start, feats):
        v = torch.var(f, dim=(0, 2, 3), unbiased=False)
        expected = torch.maximum(v, torch.clamp(0.1 * v.mean(), min=1e-4))  # the documented floor
        torch.testing.assert_close(var, expected, rtol=1e-4, atol=1e-6)
        unfloored += int((v >= expected).sum())
    assert unfloored > 0.9 * sum(v.numel() for v in start)  # the floor is the exception, not the rule


@pytest.mark.parametrize("overrides", [{}, {"miro_var_init": "published"}])
def test_published_variance_starts_at_0_1(debug28, overrides):
    minibatches = [(debug28[i].x[:8], debug28[i].y[:8]) for i in (1, 2)]
    alg = miro(debug28, BACKBONES["mnist_cnn"], **overrides)
    for var in first_step_variances(alg, minibatches):
        torch.testing.assert_close(var, torch.full_like(var, 0.1))


@pytest.mark.parametrize("dataset", ["PACS", "OfficeHome", "RotatedMNISTSubset", "OfflineDigits", "Debug28"])
def test_miros_defaults_and_search_are_unchanged(dataset):
    ours = hparams_registry.default_hparams("MIRO", dataset)
    erm = hparams_registry.default_hparams("ERM", dataset)
    assert set(ours) - set(erm) == {"ftlp_lambda", "miro_var_init"}
    assert ours["miro_var_init"] == "published"
    assert {k: v for k, v in ours.items() if k in erm} == erm
    for seed in range(1, 6):
        drawn = hparams_registry.random_hparams("MIRO", dataset, seed)
        assert drawn["miro_var_init"] == "published"  # not searched: MIRO stays the published method
        erm_drawn = hparams_registry.random_hparams("ERM", dataset, seed)
        assert {k: v for k, v in drawn.items() if k in erm_drawn} == erm_drawn


def test_bad_values_are_explained(debug28):
    with pytest.raises(UserError, match="miro_var_init must be one of published, prior"):
        miro(debug28, BACKBONES["mnist_cnn"], miro_var_init="measured")
    with pytest.raises(UserError, match="needs ftlp_prior_var=learned"):
        FTLPConfig(lam=0.1, prior_var="calibrated", learned_var_init="prior")
