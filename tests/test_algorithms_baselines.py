"""DomainBed's baseline algorithms (its Tier-1 table and the other long-standing ones): each
penalty against an independent computation, each algorithm's defining behaviour, and a resume
that continues exactly."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from domainbed import hparams_registry
from domainbed.algorithms import get_algorithm_class
from domainbed.algorithms._support import domain_risks, mean_over_domain_pairs, pool
from domainbed.algorithms.arm import group_context, widen_input_conv
from domainbed.algorithms.dann import class_balanced_weights, input_gradient_penalty, is_discriminator_step
from domainbed.algorithms.groupdro import groupdro_weights
from domainbed.algorithms.irm import irm_penalty
from domainbed.algorithms.mldg import meta_train_test_pairs
from domainbed.algorithms.mmd import mmd_penalty
from domainbed.algorithms.penalties import coral_penalty
from domainbed.algorithms.rsc import rsc_feature_mask, rsc_sample_mask
from domainbed.algorithms.sagnet import randomize_content, randomize_style
from domainbed.algorithms.vrex import vrex_penalty
from domainbed.lib.errors import UserError
from domainbed.training.atomic_files import save_verified
from domainbed.training.integrity import load_verified


# ---------------------------------------------------------------- penalties and rules
def test_irm_penalty_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    # d/dw CE(w z_i, y_i) at w = 1 is  Σ_k p_ik z_ik - z_i,y_i  (p = softmax(z_i)).
    def dw(i):
        row = z[i].tolist()
        e = [math.exp(a) for a in row]
        return sum(ek * a for ek, a in zip(e, row)) / sum(e) - row[y[i]]

    def half_grad(idx):
        return sum(dw(i) for i in idx) / len(idx)

    expected = half_grad([0, 2, 4, 6]) * half_grad([1, 3, 5])
    assert irm_penalty(z, y).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="at least 2 samples"):
        irm_penalty(z[:1], y[:1])


def test_vrex_penalty_is_the_population_variance_of_the_risks():
    risks = [0.3, 1.7, 0.9]
    mean = sum(risks) / 3
    assert vrex_penalty(torch.tensor(risks)).item() == pytest.approx(sum((r - mean) ** 2 for r in risks) / 3)


def test_groupdro_weights_match_exponentiated_gradient_by_hand():
    q, losses, eta = [0.2, 0.3, 0.5], [1.0, 3.0, 0.5], 0.1
    raw = [qi * math.exp(eta * li) for qi, li in zip(q, losses)]
    expected = [r / sum(raw) for r in raw]
    got = groupdro_weights(torch.tensor(q), torch.tensor(losses), eta)
    assert got.tolist() == pytest.approx(expected)
    assert got[1] > q[1] and got[2] < q[2]  # the worst domain gains weight, the best loses it


def test_mmd_penalty_matches_double_loop():
    g = torch.Generator().manual_seed(1)
    x = 0.3 * torch.randn(4, 3, generator=g, dtype=torch.float64)
    y = 0.3 * torch.randn(5, 3, generator=g, dtype=torch.float64) + 0.2
    gammas = (0.1, 1.0, 10.0)

    def k(a, b):
        d = sum((ai - bi) ** 2 for ai, bi in zip(a, b))
        return sum(math.exp(-gm * d) for gm in gammas)

    def mean_k(A, B):
        return sum(k(a, b) for a in A.tolist() for b in B.tolist()) / (len(A) * len(B))

    expected = mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y)
    assert mmd_penalty(x, y, gammas).item() == pytest.approx(expected, rel=1e-9)
    assert mmd_penalty(x, x, gammas).item() == pytest.approx(0.0, abs=1e-12)


def test_domain_risks_are_each_domains_cross_entropy():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(9, 4, generator=g)
    y = torch.randint(0, 4, (9,), generator=g)
    sizes = [2, 4, 3]
    expected, lo = [], 0
    for n in sizes:
        # log-softmax by hand, row by row
        rows = [-(logits[i, y[i]] - torch.logsumexp(logits[i], 0)).item() for i in range(lo, lo + n)]
        expected.append(sum(rows) / n)
        lo += n
    assert domain_risks(logits, y, sizes).tolist() == pytest.approx(expected, rel=1e-6)


def test_mean_over_domain_pairs_averages_every_unordered_pair_once():
    per_domain = [torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([4.0])]
    calls = []

    def gap(a, b):
        calls.append((a.item(), b.item()))
        return (b - a).sum()

    # pairs (1,2), (1,4), (2,4): gaps 1, 3, 2
    assert mean_over_domain_pairs(per_domain, gap).item() == pytest.approx(2.0)
    assert calls == [(1.0, 2.0), (1.0, 4.0), (2.0, 4.0)]
    single = mean_over_domain_pairs([torch.ones(3, dtype=torch.bfloat16)], gap)
    assert single.item() == 0.0 and single.dtype == torch.float32 and single.dim() == 0
    with pytest.raises(ValueError, match="at least one domain"):
        mean_over_domain_pairs([], gap)


def test_pool_concatenates_in_domain_order_and_reports_sizes():
    mb = [(torch.full((2, 1), 0.0), torch.tensor([0, 1])), (torch.full((3, 1), 1.0), torch.tensor([2, 2, 2]))]
    x, y, sizes = pool(mb)
    assert x.squeeze(1).tolist() == [0.0, 0.0, 1.0, 1.0, 1.0] and y.tolist() == [0, 1, 2, 2, 2] and sizes == [2, 3]


def test_rsc_masks_match_numpy_percentiles():
    g = torch.Generator().manual_seed(2)
    grads, changes = torch.randn(4, 10, generator=g), torch.randn(9, generator=g)
    f_drop, b_drop = 0.3, 0.2  # ranks 6.3 and 6.4: no exact-rank tie, where rounding decides
    pct = np.percentile(grads.numpy(), (1 - f_drop) * 100, axis=1)[:, None]
    assert torch.equal(rsc_feature_mask(grads, f_drop), torch.from_numpy((grads.numpy() < pct).astype(np.float32)))
    pct_b = np.percentile(changes.numpy(), (1 - b_drop) * 100)
    expected_b = torch.from_numpy((changes.numpy() < pct_b).astype(np.float32))[:, None]
    assert torch.equal(rsc_sample_mask(changes, b_drop), expected_b)


def test_sagnet_randomisation_matches_per_sample_formula():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    alpha, perm, eps = torch.rand(4, 1, generator=g, dtype=torch.float64), torch.tensor([2, 0, 3, 1]), 1e-5
    rows = x.detach().tolist()
    mu = [sum(r) / 6 for r in rows]
    var = [sum((v - m) ** 2 for v in r) / 5 for r, m in zip(rows, mu)]
    for i in range(4):
        a, j = alpha[i, 0].item(), perm[i].item()
        m2, v2 = a * mu[i] + (1 - a) * mu[j], a * var[i] + (1 - a) * var[j]
        want = [(v - mu[i]) / math.sqrt(var[i] + eps) * math.sqrt(v2 + eps) + m2 for v in rows[i]]
        assert randomize_style(x, alpha, perm)[i].tolist() == pytest.approx(want)
        want = [(v - mu[j]) / math.sqrt(var[j] + eps) * math.sqrt(var[i] + eps) + mu[i] for v in rows[j]]
        assert randomize_content(x, perm)[i].tolist() == pytest.approx(want)
    # The swapped content carries no gradient: row i's output depends on x only via row i's statistics.
    randomize_content(x, perm)[0].sum().backward()
    assert x.grad[2].abs().max() == 0 and x.grad[0].abs().max() > 0


def test_class_balanced_weights_give_each_class_equal_mass():
    y = torch.tensor([0, 0, 1, 2, 2, 2])
    expected = [1 / (2 * 4), 1 / (2 * 4), 1 / (1 * 4), 1 / (3 * 4), 1 / (3 * 4), 1 / (3 * 4)]
    assert class_balanced_weights(y, 4).tolist() == pytest.approx(expected)


def test_input_gradient_penalty_matches_linear_closed_form():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w, b = torch.randn(2, 3, generator=g, dtype=torch.float64), torch.randn(2, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0, 1])
    out = z @ w.T + b
    # ∂CE_i/∂z_i = Wᵀ (softmax_i - onehot_i) for a linear discriminator.
    p = torch.softmax(out.detach(), 1) - F.one_hot(labels, 2)
    expected = ((p @ w) ** 2).sum(1).mean().item()
    assert input_gradient_penalty(out, labels, z).item() == pytest.approx(expected)


def test_meta_split_and_alternation_schedules():
    assert meta_train_test_pairs([2, 0, 1], 1) == [(2, 1), (0, 1)]
    assert meta_train_test_pairs([2, 0, 1], 2) == [(2, 0)]
    with pytest.raises(ValueError, match="n_meta_test"):
        meta_train_test_pairs([0, 1], 2)
    assert [is_discriminator_step(u, 1) for u in range(1, 5)] == [False, True, False, True]
    assert [is_discriminator_step(u, 2) for u in range(1, 7)] == [True, False, True, True, False, True]


def test_group_context_averages_consecutive_groups():
    c = torch.arange(6.0).view(6, 1, 1, 1)
    assert group_context(c, 3).flatten().tolist() == [1, 1, 1, 4, 4, 4]
    assert group_context(c, 6).flatten().tolist() == [2.5] * 6


# ---------------------------------------------------------------- algorithms on Debug28
def make(name, data, n_domains=2, **overrides):
    hparams = hparams_registry.default_hparams(name, "Debug28")
    hparams.update(batch_size=8, **overrides)
    return get_algorithm_class(name)(data.input_shape, data.num_classes, n_domains, hparams).setup("cpu")


def batches(data, step=0, domains=(1, 2), n=8):
    lo = (step * n) % 32
    return [(data[d].x[lo:lo + n], data[d].y[lo:lo + n]) for d in domains]


def adam_steps(alg, params):
    return {int(alg.optimizer.state[p]["step"]) if p in alg.optimizer.state else 0 for p in params}


@pytest.mark.parametrize("name, lam_key, iters_key", [("IRM", "irm_lambda", "irm_penalty_anneal_iters"),
                                                      ("VREx", "vrex_lambda", "vrex_penalty_anneal_iters")])
def test_penalty_weight_switches_and_adam_resets_at_the_anneal_step(debug28, name, lam_key, iters_key):
    alg = make(name, debug28, **{lam_key: 1000.0, iters_key: 2})
    weights = [alg.update(batches(debug28, s))["penalty_weight"].item() for s in range(2)]
    params = list(alg.classifier.parameters())
    assert adam_steps(alg, params) == {2}
    weights.append(alg.update(batches(debug28, 2))["penalty_weight"].item())
    assert weights == [1.0, 1.0, 1000.0]
    assert adam_steps(alg, params) == {1}, "Adam's state is reset when the weight jumps"
    assert alg.update_count.value == 3 and int(alg.state_dict()["update_count.count"]) == 3


@pytest.mark.parametrize("name, penalty", [("CORAL", coral_penalty), ("MMD", mmd_penalty)])
def test_pairwise_penalty_loss_is_mean_risk_plus_gamma_times_mean_pair_penalty(debug28, name, penalty):
    alg = make(name, debug28, n_domains=3, mmd_gamma=0.7).eval()
    mb = batches(debug28, domains=(0, 1, 2), n=6)
    with torch.no_grad():
        loss, logs, _ = alg.compute_loss(mb)
        # Independently: each domain through the network on its own (eval mode: no batch statistics).
        feats = [alg.featurizer(x) for x, _ in mb]
        risks = [F.cross_entropy(alg.classifier(f), y).item() for f, (_, y) in zip(feats, mb)]
        pairs = [penalty(feats[i], feats[j]).item() for i, j in ((0, 1), (0, 2), (1, 2))]
    expected = sum(risks) / 3 + 0.7 * sum(pairs) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    assert logs["loss_ce"].item() == pytest.approx(sum(risks) / 3, rel=1e-4)


def test_groupdro_upweights_the_worst_domain(debug28):
    alg = make("GroupDRO", debug28)
    (x0, _), (x1, _) = batches(debug28)
    with torch.no_grad():
        l0, l1 = alg.predict(x0), alg.predict(x1)
    # Domain 0 labelled as the model predicts (low risk), domain 1 as it least expects (high risk).
    mb = [(x0, l0.argmax(1)), (x1, l1.argmin(1))]
    risks = [F.cross_entropy(l0, l0.argmax(1)).item(), F.cross_entropy(l1, l1.argmin(1)).item()]
    eta = alg.hparams["groupdro_eta"]
    raw = [0.5 * math.exp(eta * r) for r in risks]
    alg.update(mb)
    assert alg.q.tolist() == pytest.approx([r / sum(raw) for r in raw], rel=1e-5)
    assert alg.q[1] > 0.5 > alg.q[0]


def test_mixup_mixes_inputs_across_domains(debug28):
    alg = make("Mixup", debug28)
    mb = [(torch.zeros(8, 3, 28, 28), torch.zeros(8, dtype=torch.long)), (torch.ones(8, 3, 28, 28), torch.ones(8, dtype=torch.long))]
    # λ ~ Beta(0.2, 0.2) lies within float32 rounding of 0 or 1 (< 6e-8 away) in about 4% of
    # draws, and then 1 − λ or λ vanishes next to 1 and a mixed input equals an endpoint; the
    # seed fixes the draws (λ = 1.3e-5 and 0.52) instead of inheriting earlier tests' RNG state
    torch.manual_seed(0)
    _, _, extras = alg.compute_loss(mb)
    per_sample = extras["x"].flatten(1)
    assert len(per_sample) == 16
    assert torch.all(per_sample.max(1).values == per_sample.min(1).values)  # each is λ·0 + (1-λ)·1 or the reverse
    assert torch.all((per_sample[:, 0] > 0) & (per_sample[:, 0] < 1)), "every input mixes the two domains"


@pytest.mark.parametrize("name", ["DANN", "CDANN"])
def test_dann_alternates_generator_and_discriminator_steps(debug28, name):
    alg = make(name, debug28)
    disc, gen = alg.discriminator_params(), alg.generator_params()
    logs = [alg.update(batches(debug28, s)) for s in range(2)]
    assert [l["disc_step"].item() for l in logs] == [0.0, 1.0]
    # One step each: update 1 moved only the generator, update 2 only the discriminator.
    assert adam_steps(alg, gen) == {1} and adam_steps(alg, disc) == {1}
    if name == "CDANN":
        assert alg.optimizer.state[alg.class_embeddings.weight]["step"] == 1
    groups = alg.optimizer.param_groups
    assert (groups[0]["lr"], groups[1]["lr"], groups[0]["betas"]) == (alg.hparams["lr_d"], alg.hparams["lr_g"], (0.5, 0.9))


def test_sagnet_steps_the_featurizer_twice_and_each_classifier_once(debug28):
    alg = make("SagNet", debug28)
    before = alg.style_classifier.weight.detach().clone()
    alg.update(batches(debug28))
    assert adam_steps(alg, [p for p in alg.featurizer.parameters()]) == {2}  # content + adversarial
    assert adam_steps(alg, alg.classifier.parameters()) == {1}
    assert adam_steps(alg, alg.style_classifier.parameters()) == {1}
    assert not torch.equal(before, alg.style_classifier.weight)


def test_mldg_gradient_is_first_order_meta_gradient(debug28):
    alg = make("MLDG", debug28, mldg_beta=0.7)
    x, y = batches(debug28)[0]
    mb = [(x, y), (x, y)]  # identical domains: the random meta split does not matter
    net = torch.nn.Sequential(alg.featurizer, alg.classifier)
    ref = copy.deepcopy(net)
    g_i = torch.autograd.grad(F.cross_entropy(ref(x), y), list(ref.parameters()))
    lr = alg.hparams["lr"]
    with torch.no_grad():  # Adam's first step from zero state: lr · g / (|g| + eps)
        for p, g in zip(ref.parameters(), g_i):
            p -= lr * g / (g.abs() + 1e-8)
    g_j = torch.autograd.grad(F.cross_entropy(ref(x), y), list(ref.parameters()))
    alg.update(mb)
    for p, gi, gj in zip(net.parameters(), g_i, g_j):
        torch.testing.assert_close(p.grad, (gi + 0.7 * gj) / 2, rtol=1e-4, atol=1e-6)


def test_mtl_embeds_each_domain_and_predicts_from_the_batch_mean(debug28):
    alg = make("MTL", debug28, mtl_ema=0.9)
    mb = batches(debug28)
    alg.compute_loss(mb)
    with torch.no_grad():
        for d, (x, _) in enumerate(mb):
            torch.testing.assert_close(alg.embeddings[d], 0.9 * alg.featurizer(x).mean(0))
        alg.eval()
        x = mb[0][0]
        f = alg.featurizer(x)
        expected = alg.classifier(torch.cat([f, f.mean(0, keepdim=True).expand_as(f)], 1))
        torch.testing.assert_close(alg.predict(x), expected)
        other = torch.cat([x[:1], mb[1][0][1:]])
        assert not torch.allclose(alg.predict(other)[0], alg.predict(x)[0])


def test_arm_predicts_with_the_context_of_its_group(debug28):
    alg = make("ARM", debug28).eval()
    x = torch.cat([debug28[1].x[:8], debug28[2].x[:8]])
    with torch.no_grad():
        both = alg.predict(x)  # 16 = two groups of batch_size 8
        torch.testing.assert_close(both[:8], alg.predict(x[:8]))
        torch.testing.assert_close(both[8:], alg.predict(x[8:]))
        assert not torch.allclose(alg.predict(torch.cat([x[:1], x[9:16]]))[0], both[0])
        assert alg.predict(x[:5]).shape == (5, debug28.num_classes)  # not a multiple: one group
    assert alg.featurizer.trunk.blocks[0][0].in_channels == 4


def test_arm_on_rgb_images_with_a_pretrained_timm_backbone(monkeypatch):
    from domainbed.networks import backbones

    monkeypatch.setattr(backbones, "load_pretrained", lambda trunk, name, path: "test weights")
    hparams = hparams_registry.default_hparams("ARM", "PACS")
    assert hparams["batch_size"] == 8
    hparams.update(backbone="resnet18", pretrained=True)
    torch.manual_seed(0)
    plain = backbones.create_trunk("resnet18", (3, 32, 32), False, None)
    torch.manual_seed(0)
    alg = get_algorithm_class("ARM")((3, 32, 32), 4, 2, hparams).setup("cpu")
    w = alg.featurizer.trunk.conv1.weight
    assert w.shape[1] == 4 and torch.equal(w[:, :3], plain.conv1.weight) and torch.equal(w[:, 3], w[:, 0])
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4,))
    assert torch.isfinite(alg.update([(x, y), (x.flip(0), y.flip(0))])["loss"])
    assert alg.eval().predict(x).shape == (4, 4)


def test_widen_input_conv_rejects_modules_without_convolution():
    with pytest.raises(ValueError, match="no Conv2d"):
        widen_input_conv(torch.nn.Linear(2, 2), 4)



TIER1 = ["IRM", "VREx", "GroupDRO", "Mixup", "MMD", "RSC", "MLDG", "DANN", "CDANN", "SagNet", "MTL", "ARM"]


@pytest.mark.parametrize("name", TIER1)
def test_bf16_autocast_step(debug28, name):
    # CUDA trains in bf16 by default; CPU autocast runs the same mixed-dtype paths.
    extra = {"grad_penalty": 0.1} if "DANN" in name else {}
    alg = make(name, debug28, precision="bf16", **extra)
    logs = alg.update(batches(debug28, n=4))
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in logs.values()), logs
    assert alg.eval().predict(debug28[0].x[:4]).shape == (4, debug28.num_classes)

# ---------------------------------------------------------------- resume
@pytest.mark.parametrize("name, overrides", [
    ("IRM", {"irm_penalty_anneal_iters": 3, "irm_lambda": 50.0}),  # the switch happens after the resume
    ("DANN", {"d_steps_per_g_step": 2}),  # own update, two optimizer groups; resumed: disc, disc, gen
])
@pytest.mark.slow
def test_resumed_copy_continues_like_the_uninterrupted_run(debug28, tmp_path, name, overrides):
    torch.manual_seed(0)
    run = make(name, debug28, **overrides)
    for s in range(2):
        run.update(batches(debug28, s, n=4))
    save_verified({"algorithm": run.state_dict(), "optimizer": run.optimizer.state_dict(),
                   "scaler": run.scaler.state_dict(), "rng": torch.get_rng_state()}, tmp_path / "ckpt.pt")
    for s in range(2, 5):
        run.update(batches(debug28, s, n=4))

    def resumed(drop_counter=False):
        torch.manual_seed(123)  # another initialisation: everything must come from the checkpoint
        alg = make(name, debug28, **overrides)
        state = load_verified(tmp_path / "ckpt.pt")
        model = {k: v for k, v in state["algorithm"].items() if not (drop_counter and "update_count" in k)}
        alg.load_state_dict(model, strict=not drop_counter)
        alg.optimizer.load_state_dict(state["optimizer"])
        alg.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        for s in range(2, 5):
            alg.update(batches(debug28, s, n=4))
        return alg

    alg = resumed()
    assert alg.update_count.value == run.update_count.value == 5
    for (k, a), b in zip(run.state_dict().items(), alg.state_dict().values()):
        assert torch.equal(a, b), k
    # Control: without the saved count, the schedule restarts and the runs part.
    lost = resumed(drop_counter=True)
    assert not all(torch.equal(a, b) for a, b in zip(run.parameters(), lost.parameters()))


def test_begin_update_sets_up_once_and_returns_the_batches_in_training_mode(debug28):
    hparams = hparams_registry.default_hparams("ERM", "Debug28")
    alg = get_algorithm_class("ERM")(debug28.input_shape, debug28.num_classes, 2, hparams)
    assert alg.optimizer is None
    alg.eval()
    mb = batches(debug28)
    out = alg.begin_update(mb)
    optimizer = alg.optimizer
    assert optimizer is not None and alg.training
    assert len(out) == len(mb)
    for (x, y), (x0, y0) in zip(out, mb):
        torch.testing.assert_close(x, x0)
        assert torch.equal(y, y0)
    alg.eval()
    alg.begin_update(mb)
    assert alg.optimizer is optimizer and alg.training  # set up once; training mode every step


def test_mldg_refuses_a_single_training_domain(debug28):
    alg = make("MLDG", debug28, n_domains=1)
    with pytest.raises(UserError, match="at least 2 training domains"):
        alg.update(batches(debug28, domains=(1,)))
