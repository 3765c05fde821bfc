"""FT-LP v2: same normalisation in prior and network, a posterior variance that does work,
calibrated prior variances, the dead-channel diagnostic, the shuffled-prior control, and
the one rule that makes <Base>_FTLP variants."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from domainbed import hparams_registry
from domainbed.algorithms import algorithm_names, get_algorithm_class
from domainbed.algorithms.ftlp.config import FTLPConfig
from domainbed.algorithms.ftlp.prior import PriorKL
from domainbed.algorithms.registry import declaration
from domainbed.datasets import build_dataset


def build(name, hparams, shape=(3, 32, 32), classes=10):
    torch.manual_seed(0)
    return get_algorithm_class(name)(shape, classes, 2, hparams).setup("cpu")


def image_hparams(name, **overrides):
    h = hparams_registry.default_hparams(name, "RotatedMNISTSubset")
    h.update(overrides)
    return h


BACKBONES = {
    # Bundled ImageNet weights; BatchNorm uses batch statistics (freeze_bn auto = False).
    "efficientnet_lite0": {"backbone": "efficientnet_lite0", "pretrained": True},
    # ResNet weights are not offline here; the normalisation rule (frozen BatchNorm) is what is tested.
    "resnet18": {"backbone": "resnet18", "pretrained": False},
    # LayerNorm only.
    "vit_tiny": {"backbone": "vit_tiny_patch16_224", "pretrained": False},
}


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("name", ["ERM_FTLP", "MIRO"])
def test_divergence_and_gradient_exactly_zero_at_initialisation(backbone, name):
    overrides = dict(BACKBONES[backbone])
    if name == "ERM_FTLP":
        overrides.update(ftlp_posterior="point", ftlp_layers="all")
    alg = build(name, image_hparams(name, **overrides)).train()
    torch.manual_seed(1)
    x = torch.randn(12, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    alg.calibrate(x)
    kl = alg.prior_divergence(x, alg.featurize(x))
    if name == "ERM_FTLP":
        assert kl.item() == 0.0
    else:  # MIRO at step 0: only its log-variance term, Σ_l mean ½ log σ²_l
        consts = [0.5 * torch.log(torch.nn.functional.softplus(p.detach()) + 1e-5).mean()
                  for n, p in alg.prior_kl.named_parameters() if n.startswith("raw_var_q")]
        assert len(consts) == len(alg.ftlp_layer_names) >= 4
        assert kl.item() == pytest.approx(float(sum(consts)), rel=1e-6)
    kl.backward()
    net_grads = [p.grad for p in [*alg.featurizer.parameters(), *alg.classifier.parameters()] if p.grad is not None]
    assert net_grads and all(g.abs().max().item() == 0.0 for g in net_grads)


def test_prior_batchnorm_follows_the_network_and_keeps_its_running_statistics():
    alg = build("ERM_FTLP", image_hparams("ERM_FTLP")).train()
    bn_prior = [m for m in alg.prior_network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in bn_prior]
    x = torch.randn(8, 3, 32, 32)
    alg.prior_features(x)
    assert all(m.training for m in bn_prior)  # batch statistics, as the trained network
    assert all(torch.equal(m.running_mean, b) for m, b in zip(bn_prior, before))
    alg.eval()
    alg.prior_features(x)
    assert not any(m.training for m in bn_prior)


def test_kl_equals_torch_distributions_on_the_same_tensors():
    torch.manual_seed(0)
    module = PriorKL([3, 5], FTLPConfig(lam=1.0, posterior="sample", prior_var="calibrated", kappa=0.3))
    prior = [torch.randn(6, 3, 4, 4), torch.randn(6, 5)]
    module.calibrate(prior)
    with torch.no_grad():
        module.log_ratio0.normal_()
        module.log_ratio1.normal_()
    post = [p + 0.5 * torch.randn_like(p) for p in prior]
    expected = 0.0
    for i, (mu, f0) in enumerate(zip(post, prior)):
        shape = (1, -1) + (1,) * (mu.dim() - 2)
        var_q = getattr(module, f"var_q{i}").view(shape)
        var_p = var_q * getattr(module, f"log_ratio{i}").detach().exp().view(shape)
        expected += kl_divergence(Normal(mu, var_p.sqrt().expand_as(mu)), Normal(f0, var_q.sqrt().expand_as(f0))).mean()
    torch.testing.assert_close(module(post, prior), expected, rtol=1e-5, atol=1e-6)


def test_calibrated_prior_variance_is_kappa_times_the_floored_channel_variance():
    f = np.random.default_rng(0).normal(size=(16, 4, 3, 3)).astype(np.float32)
    f[:, 1] *= 1e-3  # a nearly constant channel: floored at 0.1 of the layer's mean variance
    module = PriorKL([4], FTLPConfig(lam=1.0, kappa=0.5))
    assert not bool(module.calibrated)
    module.calibrate([torch.from_numpy(f)])
    v = f.transpose(1, 0, 2, 3).reshape(4, -1).var(axis=1)
    expected = 0.5 * np.maximum(v, 0.1 * v.mean())
    np.testing.assert_allclose(module.var_q0.numpy(), expected, rtol=1e-5)
    assert bool(module.calibrated) and module.calibrated.device.type == "cpu"


def debug_alg(data, **overrides):
    h = hparams_registry.default_hparams("ERM_FTLP", "Debug28")
    h.update({"batch_size": 8, **overrides})
    torch.manual_seed(0)
    alg = get_algorithm_class("ERM_FTLP")(data.input_shape, data.num_classes, 2, h).setup("cpu").train()
    x = torch.cat([data[i].x[:8] for i in (1, 2)])
    y = torch.cat([data[i].y[:8] for i in (1, 2)])
    alg.calibrate(x)
    return alg, x, y


def test_posterior_variance_gets_gradients_from_the_task_loss_and_from_the_kl(debug28):
    alg, x, y = debug_alg(debug28, ftlp_layers="all", ftlp_posterior="sample")
    feats = alg.featurize(x)
    torch.nn.functional.cross_entropy(alg.classifier(feats.final), y).backward()
    ratios = [p for n, p in alg.prior_kl.named_parameters() if n.startswith("log_ratio")]
    assert len(ratios) == 5 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in ratios)

    # The KL alone, on noise-free means (so s reaches it only through the variance terms):
    # d/ds of mean_elements ½(e^s − 1 − s) is ½(e^s − 1)/C per channel.
    alg.zero_grad()
    with torch.no_grad():
        for p in ratios:
            p.fill_(0.5)
    alg.eval()
    alg.prior_divergence(x, alg.featurize(x)).backward()
    for p in ratios:
        torch.testing.assert_close(p.grad, torch.full_like(p, 0.5 * (math.exp(0.5) - 1) / p.numel()))


def test_noise_at_a_stage_reaches_the_later_layers(debug28):
    alg, x, _ = debug_alg(debug28, ftlp_layers="all", ftlp_posterior="sample")
    with torch.no_grad():
        clean = alg.featurizer.forward_features(x, intermediates=True)  # GroupNorm: no batch statistics
        noisy = alg.featurize(x)
    assert torch.equal(noisy.intermediates[0], clean.intermediates[0])  # the first mean sees no noise
    assert not torch.allclose(noisy.intermediates[1], clean.intermediates[1])  # later means read the sample
    assert not torch.equal(noisy.final, noisy.mean)  # the classifier reads a sample
    alg.eval()
    with torch.no_grad():
        assert torch.equal(alg.featurize(x).final, clean.final)  # evaluation reads the mean


def test_point_posterior_has_no_noise_and_no_variance_parameters(debug28):
    alg, x, _ = debug_alg(debug28, ftlp_posterior="point", ftlp_layers="all")
    assert not list(alg.prior_kl.parameters())
    with torch.no_grad():
        f = alg.featurize(x)
        assert torch.equal(f.final, alg.featurizer.forward_features(x).final)


def test_shuffled_prior_control_removes_per_image_information(debug28):
    alg, x, _ = debug_alg(debug28, ftlp_posterior="point")
    assert alg.prior_divergence(x, alg.featurize(x)).item() == 0.0
    ctrl, x, _ = debug_alg(debug28, ftlp_posterior="point", ftlp_control="shuffled")
    kl = ctrl.prior_divergence(x, ctrl.featurize(x))
    assert kl.item() > 0.1  # the prior's features now belong to other images of the batch
    # The registered control arm is the same configuration under its own name.
    h = hparams_registry.default_hparams("ERM_FTLP_ShuffledPrior", "Debug28")
    assert "ftlp_control" not in h
    arm = get_algorithm_class("ERM_FTLP_ShuffledPrior")(debug28.input_shape, debug28.num_classes, 2, h)
    assert arm.ftlp_cfg.control == "shuffled" and declaration("ERM_FTLP_ShuffledPrior").control_of == "ERM_FTLP"


def test_dead_channel_diagnostic_fires_only_where_the_prior_is_dead():
    data = build_dataset("RotatedMNISTSubset", None, [5], {"image_size": 32})
    x = torch.cat([data[e].tensors[0][:16] if hasattr(data[e], "tensors") else torch.stack([data[e][i][0] for i in range(16)])
                   for e in range(2)])
    frozen = build("ERM_FTLP", image_hparams("ERM_FTLP", freeze_bn=True)).train()
    with pytest.warns(RuntimeWarning, match=r"mostly dead at final.*freeze_bn false"):
        frozen.calibrate(x)
    live = build("ERM_FTLP", image_hparams("ERM_FTLP", ftlp_layers="all")).train()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        live.calibrate(x)


def test_every_base_that_exposes_features_gets_its_ftlp_variant():
    names = algorithm_names()
    for name in names:
        cls = get_algorithm_class(name)
        base_name = declaration(name).variant_of
        if base_name is not None:
            base = get_algorithm_class(base_name)
            assert issubclass(cls, base) and name == f"{base_name}_FTLP" and base.EXPOSES_FEATURES
        elif cls.EXPOSES_FEATURES and name not in ("MIRO", "ERM_FTLP_ShuffledPrior"):
            assert f"{name}_FTLP" in names, name
    assert {"ERM_FTLP", "CORAL_FTLP", "SWAD_FTLP"} <= set(names)


def test_a_new_base_gets_its_variant_from_the_rule():
    from domainbed.algorithms import ftlp, register_algorithm
    from domainbed.algorithms.erm import ERM
    from domainbed.algorithms.registry import ALGORITHMS

    new = register_algorithm(type("NewBaseForTest", (ERM,), {"__module__": __name__}))
    try:
        assert ftlp.register_ftlp_variants() == ["NewBaseForTest_FTLP"]
        variant = get_algorithm_class("NewBaseForTest_FTLP")
        assert variant.__mro__[1:3] == (ftlp.FTLP, new) and declaration("NewBaseForTest_FTLP").variant_of == "NewBaseForTest"
        assert ftlp.register_ftlp_variants() == []  # idempotent
    finally:
        for key in ("NewBaseForTest", "NewBaseForTest_FTLP"):
            ALGORITHMS._items.pop(key, None)
