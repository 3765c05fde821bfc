"""FT-LP: the prior module, its variants, MIRO as a configuration, SWAD averaging."""

from __future__ import annotations

import pytest
import torch
from fixtures_algorithms import make

from domainbed import hparams_registry
from domainbed.algorithms import get_algorithm_class
from domainbed.algorithms.ftlp import FTLPConfig, PriorKL


def batches(data, n=8):
    return [(data[i].x[:n], data[i].y[:n]) for i in (1, 2)]


def ready(alg, data):
    """Training mode and σ²_Q calibrated on a source batch, as the first update does."""
    alg.train()
    alg.calibrate(torch.cat([x for x, _ in batches(data)]))
    return alg


@pytest.mark.parametrize("layers", ["final", "stages", "all"])
def test_point_kl_and_its_gradient_are_zero_at_initialisation(debug28, layers):
    alg = ready(make("ERM_FTLP", debug28, ftlp_layers=layers, ftlp_posterior="point"), debug28)
    x = debug28[1].x[:8]
    kl = alg.prior_divergence(x, alg.featurize(x))
    assert kl.item() == 0.0
    kl.backward()
    grads = [p.grad for p in alg.parameters() if p.grad is not None]
    assert grads and all(g.abs().max().item() == 0.0 for g in grads)


def test_lambda_zero_without_noise_follows_erm_exactly(debug28):
    erm = make("ERM", debug28)
    ftlp = make("ERM_FTLP", debug28, ftlp_lambda=0.0, ftlp_posterior="point")
    for step in range(4):
        torch.manual_seed(step)
        erm.update(batches(debug28))
        torch.manual_seed(step)
        logs = ftlp.update(batches(debug28))
        assert logs["ftlp_kl"].item() > 0 or step == 0
        for (n1, p1), (_n2, p2) in zip(erm.featurizer.named_parameters(), ftlp.featurizer.named_parameters()):
            assert torch.equal(p1, p2), (step, n1)
        assert torch.equal(erm.classifier.weight, ftlp.classifier.weight)


def test_sampled_posterior_leaves_the_global_rng_alone(debug28):
    """The noise has its own generator: paired ERM and FT-LP runs keep one RNG stream."""
    make("ERM", debug28).update(batches(debug28))
    after_erm = torch.rand(3)
    make("ERM_FTLP", debug28, ftlp_layers="all", ftlp_posterior="sample").update(batches(debug28))
    assert torch.equal(torch.rand(3), after_erm)


def test_prior_never_moves_and_is_not_optimised(debug28):
    alg = make("ERM_FTLP", debug28, ftlp_layers="all", ftlp_lambda=1.0)
    initial = {k: v.clone() for k, v in alg.prior_network.state_dict().items()}
    for _ in range(10):
        alg.update(batches(debug28))
    for k, v in alg.prior_network.state_dict().items():
        assert torch.equal(v, initial[k]), k
    prior_ids = {id(p) for p in alg.prior_network.parameters()}
    optimised = {id(p) for g in alg.optimizer.param_groups for p in g["params"]}
    assert not prior_ids & optimised
    assert not any(k.startswith("_prior") for k in alg.state_dict())
    assert all(not p.requires_grad for p in alg.prior_network.parameters())
    # The featurizer did move, so the prior is a copy, not an alias.
    assert any(not torch.equal(a, b) for a, b in zip(alg.featurizer.parameters(), alg.prior_network.parameters()))


def test_variance_group_gets_its_lr_multiplier(debug28):
    alg = make("ERM_FTLP", debug28, ftlp_encoder_lr_mult=10.0, ftlp_posterior="sample")
    lrs = [g["lr"] for g in alg.optimizer.param_groups]
    assert lrs == [pytest.approx(1e-3), pytest.approx(1e-2)]


def test_miro_configuration_equals_closed_form_miro_loss():
    torch.manual_seed(0)
    shapes = [(4, 3, 5, 5), (4, 6, 2, 2)]
    f = [torch.randn(s) for s in shapes]
    f0 = [torch.randn(s) for s in shapes]
    cfg = FTLPConfig(lam=1.0, posterior="point", layers="stages", prior_var="learned", var_init=0.1)
    module = PriorKL([3, 6], cfg)
    raws = [module.raw_var_q0, module.raw_var_q1]
    with torch.no_grad():
        for raw in raws:
            raw.add_(torch.randn_like(raw))
    expected = 0.0
    for fl, f0l, raw in zip(f, f0, raws):
        var = (torch.nn.functional.softplus(raw) + 1e-5).view(1, -1, 1, 1)  # MIRO: softplus(b) + 1e-5
        expected = expected + (0.5 * ((fl - f0l) ** 2 / var + var.log())).mean()
    torch.testing.assert_close(module(f, f0), expected, rtol=1e-5, atol=1e-6)
    # At initialisation MIRO's variance is 0.1.
    fresh = PriorKL([3], cfg)
    torch.testing.assert_close(torch.nn.functional.softplus(fresh.raw_var_q0.detach()) + 1e-5, torch.full((3,), 0.1))


def test_learned_prior_variance_does_not_collapse():
    """Learning σ²_Q (point posterior) settles at the drift size; it does not inflate the
    variance to switch the prior off, so the pull on the features stays."""
    torch.manual_seed(0)
    mu, f0 = torch.randn(64, 8), torch.randn(64, 8)
    module = PriorKL([8], FTLPConfig(lam=1.0, posterior="point", prior_var="learned"))
    opt = torch.optim.Adam(module.parameters(), lr=0.05)
    for _ in range(2000):
        opt.zero_grad()
        module([mu], [f0]).backward()
        opt.step()
    var = torch.nn.functional.softplus(module.raw_var_q0.detach()) + 1e-5
    drift = ((mu - f0) ** 2).mean(0)  # the analytic optimum per channel
    torch.testing.assert_close(var, drift, rtol=2e-2, atol=1e-3)
    mu_req = mu.clone().requires_grad_(True)
    module([mu_req], [f0]).backward()
    assert mu_req.grad.abs().mean() > 1e-3


def test_swad_average_is_mean_of_step_weights(debug28):
    alg = make("SWAD", debug28, swad_n_converge=1, swad_n_tolerance=2, swad_tolerance_ratio=10.0)
    snapshots = []
    for i in range(4):
        alg.update(batches(debug28))
        alg.on_step_end(i)
        snapshots.append({k: v.clone() for k, v in alg.predictive_state().items()})
        if i % 2 == 1:  # two segments of two steps
            alg.on_evaluation(i, {"val_loss": 1.0 - 0.1 * i})
    alg.on_train_end(None)
    averaged = alg.eval_network().state_dict()
    assert alg.eval_network() is not alg
    for k, v in averaged.items():
        if v.is_floating_point():
            expected = torch.stack([s[k] for s in snapshots]).mean(0)
            torch.testing.assert_close(v, expected, rtol=1e-5, atol=1e-6)


def test_swad_ftlp_average_has_no_prior_and_no_variances(debug28):
    alg = make("SWAD_FTLP", debug28, swad_n_converge=1, ftlp_layers="all", ftlp_posterior="sample")
    for i in range(3):
        alg.update(batches(debug28))
        alg.on_step_end(i)
        alg.on_evaluation(i, {"val_loss": 1.0})
    alg.on_train_end(None)
    net = alg.eval_network()
    keys = list(net.state_dict())
    assert keys and all(k.startswith(("featurizer.", "classifier.")) for k in keys)
    n_params = sum(p.numel() for p in net.parameters())
    expected = sum(p.numel() for p in alg.featurizer.parameters()) + sum(p.numel() for p in alg.classifier.parameters())
    assert n_params == expected


def test_variants_are_subclasses_of_their_bases():
    for variant, base in (("ERM_FTLP", "ERM"), ("CORAL_FTLP", "CORAL"), ("SWAD_FTLP", "SWAD"), ("MIRO", "ERM")):
        assert issubclass(get_algorithm_class(variant), get_algorithm_class(base))


def test_miro_exposes_only_lambda_and_uses_dataset_table():
    h = hparams_registry.default_hparams("MIRO", "PACS")
    assert [k for k in h if k.startswith("ftlp_")] == ["ftlp_lambda"] and h["ftlp_lambda"] == 0.01
    assert hparams_registry.default_hparams("MIRO", "OfficeHome")["ftlp_lambda"] == 0.1
    assert hparams_registry.default_hparams("SWAD", "VLCS")["swad_tolerance_ratio"] == 0.2
    assert hparams_registry.default_hparams("SWAD", "PACS")["swad_tolerance_ratio"] == 0.3


def test_bad_ftlp_hparams_are_explained(debug28):
    with pytest.raises(ValueError, match="ftlp_layers must be one of"):
        make("ERM_FTLP", debug28, ftlp_layers="everything")
    with pytest.raises(ValueError, match="needs ftlp_posterior=point"):
        make("ERM_FTLP", debug28, ftlp_prior_var="learned", ftlp_posterior="sample")


@pytest.mark.slow
def test_swad_state_survives_a_checkpoint_round_trip(debug28, tmp_path):
    from domainbed.training.atomic_files import save_verified
    from domainbed.training.integrity import load_verified

    def run(alg, start, stop):
        for i in range(start, stop):
            torch.manual_seed(i)
            alg.update(batches(debug28))
            alg.on_step_end(i)
            if i % 2 == 1:
                alg.on_evaluation(i, {"val_loss": [3.0, 2.0, 2.5, 2.6, 2.7, 2.8][i // 2]})

    ref = make("SWAD_FTLP", debug28, swad_n_converge=2, swad_n_tolerance=2, ftlp_layers="all", ftlp_posterior="sample")
    run(ref, 0, 12)
    first = make("SWAD_FTLP", debug28, swad_n_converge=2, swad_n_tolerance=2, ftlp_layers="all", ftlp_posterior="sample")
    run(first, 0, 7)
    save_verified({"alg": first.state_dict(), "opt": first.optimizer.state_dict()}, tmp_path / "c.pt")
    state = load_verified(tmp_path / "c.pt")
    resumed = make("SWAD_FTLP", debug28, swad_n_converge=2, swad_n_tolerance=2, ftlp_layers="all", ftlp_posterior="sample")
    resumed.load_state_dict(state["alg"])
    resumed.optimizer.load_state_dict(state["opt"])
    run(resumed, 7, 12)
    for alg in (ref, resumed):
        alg.on_train_end(None)
    assert ref.swad.valley.accepted_segments == resumed.swad.valley.accepted_segments
    assert int(resumed.noise_step) == 12
    for (k, a), b in zip(ref.eval_network().state_dict().items(), resumed.eval_network().state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_compile_hparam_compiles_featurizer_and_prior_in_place(debug28):
    alg = make("ERM_FTLP", debug28, compile=True)
    assert alg.featurizer.trunk._compiled_call_impl is not None
    assert alg.prior_network.trunk._compiled_call_impl is not None
    assert not any("_orig_mod" in k for k in alg.state_dict())
