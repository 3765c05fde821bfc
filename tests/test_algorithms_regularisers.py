"""The regularisers of DomainBed's later table (Fish, Fishr, IGA, ANDMask, TRM, EQRM, SD,
SelfReg, ...): each penalty against an independent computation (closed form, naive
loop, scipy, per-sample autograd), each algorithm's specific behaviour, and resuming."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_algorithms import make
from scipy import optimize, stats

from domainbed.algorithms._support import restart_optimizer
from domainbed.algorithms.andmask import and_mask, sand_mask
from domainbed.algorithms.cad import cad_bottleneck_loss
from domainbed.algorithms.causirl import causirl_halves, gaussian_kernel_mmd
from domainbed.algorithms.eqrm import eqrm_quantile_loss
from domainbed.algorithms.fish import fish_meta_step
from domainbed.algorithms.fishr import (
    domain_gradient_variances,
    ema_with_correction,
    fishr_penalty,
    per_sample_classifier_grads,
)
from domainbed.algorithms.ib import ib_penalty, irm_penalty
from domainbed.algorithms.iga import iga_penalty
from domainbed.algorithms.penalties import coral_penalty
from domainbed.algorithms.sd import spectral_decoupling_penalty
from domainbed.algorithms.selfreg import in_class_partners, selfreg_regularizer
from domainbed.algorithms.trm import neumann_inverse_hvp


def batches(data, offset=0, n=8):
    return [(data[i].x[offset:offset + n], data[i].y[offset:offset + n]) for i in (1, 2)]


def net_params(alg):
    return list(alg.featurizer.parameters()) + list(alg.classifier.parameters())


# ---------------------------------------------------------------- SD
def test_sd_penalty_is_the_mean_squared_logit_and_sd_logs_it(debug28):
    assert spectral_decoupling_penalty(torch.tensor([[1.0, -2.0], [3.0, 0.5]])).item() == pytest.approx(14.25 / 4)
    alg = make("SD", debug28)
    ref = copy.deepcopy(alg)
    logs = alg.update(batches(debug28))
    x, y = (torch.cat(t) for t in zip(*batches(debug28)))
    with torch.no_grad():
        logits = ref.predict(x)
    assert logs["penalty_sd"].item() == pytest.approx(logits.pow(2).mean().item(), rel=1e-5)
    assert logs["loss"].item() == pytest.approx(F.cross_entropy(logits, y).item() + 0.1 * logs["penalty_sd"].item(), rel=1e-5)


# ---------------------------------------------------------------- AND-mask / SAND-mask
def naive_masks(grads, tau, k=None):
    """Per component, by loops: the AND-mask (k None) or SAND-mask of float64 grads (E, n)."""
    n_dom, n = grads.shape
    mask = np.zeros(n)
    for j in range(n):
        agreement = abs(sum(np.sign(grads[e, j]) for e in range(n_dom)) / n_dom)
        if k is None:
            mask[j] = float(agreement >= tau)
        else:
            var = np.var(grads[:, j], ddof=1) if n_dom > 1 else np.nan
            var = 1e-17 if np.isnan(var) else var
            with np.errstate(divide="ignore", invalid="ignore"):
                m = max(0.0, math.tanh(k / var * (agreement - tau))) if var > 0 else (
                    1.0 if agreement > tau else (np.nan if agreement == tau else 0.0))
            mask[j] = 1e-17 if np.isnan(m) else m
    return mask * grads.mean(0) / (1e-10 + mask.mean())


@pytest.mark.parametrize("tau", [1.0, 0.6, 0.2])
def test_and_mask_matches_a_loop_and_drops_disagreeing_signs(tau):
    g = torch.randn(3, 60, dtype=torch.float64)
    np.testing.assert_allclose(and_mask(g, tau).numpy(), naive_masks(g.numpy(), tau), rtol=1e-12)
    out = and_mask(torch.tensor([[1.0, -1.0, 2.0], [3.0, 1.0, -1.0]]), 1.0)
    assert out.tolist() == pytest.approx([6.0, 0.0, 0.0])  # mean 2, kept fraction 1/3


@pytest.mark.parametrize("tau, k", [(0.5, 10.0), (0.2, 1e-3), (0.9, 1e4)])
def test_sand_mask_matches_a_loop(tau, k):
    g = torch.randn(3, 60, dtype=torch.float64)
    g[:, 0] = 0.5  # zero variance, full agreement
    np.testing.assert_allclose(sand_mask(g, tau, k).numpy(), naive_masks(g.numpy(), tau, k), rtol=1e-9)


def test_sand_mask_with_domainbed_default_tau_masks_everything():
    assert torch.count_nonzero(sand_mask(torch.randn(2, 100), 1.0, 10.0)) == 0


def test_andmask_update_steps_only_where_domain_gradients_agree(debug28):
    alg = make("ANDMask", debug28, tau=1.0)
    ref = copy.deepcopy(alg)
    bs = batches(debug28)
    alg.update(bs)
    per_domain = [torch.autograd.grad(F.cross_entropy(ref.predict(x), y), net_params(ref)) for x, y in bs]
    n_disagree = 0
    for p, p0, g0, g1 in zip(net_params(alg), net_params(ref), *per_domain):
        disagree = torch.sign(g0) != torch.sign(g1)
        n_disagree += int(disagree.sum())
        assert torch.all(p.grad[disagree] == 0) and torch.equal(p[disagree], p0[disagree])
        kept = (~disagree).float().mean()
        torch.testing.assert_close(p.grad[~disagree], ((g0 + g1) / 2)[~disagree] / (1e-10 + kept))
    assert n_disagree > 0


# ---------------------------------------------------------------- Fish
def test_fish_meta_step_formula():
    meta, inner = [torch.tensor([0.0, 2.0]), torch.tensor([[4.0]])], [torch.tensor([1.0, 0.0]), torch.tensor([[0.0]])]
    fish_meta_step(meta, inner, 0.25)
    assert meta[0].tolist() == [0.25, 1.5] and meta[1].item() == 3.0


def test_fish_moves_weights_toward_the_inner_loop_result(debug28):
    alg = make("Fish", debug28, meta_lr=0.5)
    start = copy.deepcopy(torch.nn.ModuleList([alg.featurizer, alg.classifier]))
    inner = copy.deepcopy(start)
    opt = torch.optim.Adam(inner.parameters(), lr=alg.hparams["lr"])
    bs = batches(debug28)
    for x, y in bs:  # one Adam step per domain, in order
        opt.zero_grad()
        F.cross_entropy(inner[1](inner[0](x)), y).backward()
        opt.step()
    alg.update(bs)
    for p, p0, pi in zip(net_params(alg), start.parameters(), inner.parameters()):
        torch.testing.assert_close(p, p0 + 0.5 * (pi - p0))
    assert not torch.equal(alg.classifier.weight, start[1].weight)


# ---------------------------------------------------------------- Fishr
@pytest.mark.parametrize("nonlinear", [False, True])
def test_per_sample_classifier_grads_match_per_sample_autograd(nonlinear):
    from domainbed.networks import build_classifier

    torch.manual_seed(0)
    clf = build_classifier(32, 3, nonlinear)
    f, y = torch.randn(5, 32, requires_grad=True), torch.randint(0, 3, (5,))
    got = per_sample_classifier_grads(clf, f, y)
    for i in range(5):
        g = torch.autograd.grad(F.cross_entropy(clf(f[i:i + 1]), y[i:i + 1]), list(clf.parameters()))
        torch.testing.assert_close(got[i], torch.cat([t.reshape(-1) for t in g]))
    if not nonlinear:  # closed form: (softmax - onehot) ⊗ f for the weight, softmax - onehot for the bias
        r = F.softmax(clf(f), 1) - F.one_hot(y, 3)
        torch.testing.assert_close(got, torch.cat([(r[:, :, None] * f[:, None, :]).reshape(5, -1), r], 1))
    got.pow(2).sum().backward()  # differentiable w.r.t. the features (the penalty trains the featurizer)
    assert f.grad is not None and f.grad.abs().sum() > 0


def test_fishr_variances_penalty_and_ema_match_loops():
    g = torch.randn(7, 4, dtype=torch.float64)
    v = domain_gradient_variances(g, [3, 4])
    np.testing.assert_allclose(v.numpy(), np.stack([np.var(g[:3].numpy(), 0), np.var(g[3:].numpy(), 0)]))
    mean = v.numpy().mean(0)
    expected = sum(((v.numpy()[e] - mean) ** 2).mean() for e in range(2)) / 2
    assert fishr_penalty(v).item() == pytest.approx(expected)
    first, state = ema_with_correction(torch.zeros(2), torch.tensor([1.0, 2.0]), 0.9)
    assert first.tolist() == pytest.approx([1.0, 2.0]) and state.tolist() == pytest.approx([0.1, 0.2])
    second, _ = ema_with_correction(state, torch.tensor([3.0, 0.0]), 0.9)
    assert second.tolist() == pytest.approx([(0.09 + 0.3) / 0.1, 0.18 / 0.1])


def test_fishr_penalty_switches_on_after_annealing_and_restarts_adam(debug28):
    alg = make("Fishr", debug28, penalty_anneal_iters=2, **{"lambda": 10.0})
    for step in range(3):
        before = alg.optimizer
        logs = alg.update(batches(debug28, offset=8 * step))
        weight = 10.0 if step == 2 else 0.0
        assert logs["loss"].item() == pytest.approx(logs["loss_ce"].item() + weight * logs["penalty_fishr"].item(), rel=1e-5)
        assert (alg.optimizer is not before) == (step == 2)
    assert int(alg.steps.count) == 3 and alg.variance_ema.abs().sum() > 0


# ---------------------------------------------------------------- SelfReg
def test_in_class_partners_are_a_class_preserving_permutation():
    y = torch.tensor([1, 0, 2, 1, 1, 0, 2, 2, 2])
    p = in_class_partners(y)
    assert sorted(p.tolist()) == list(range(9)) and torch.equal(y[p], y)


def test_selfreg_regularizer_matches_a_loop():
    torch.manual_seed(0)
    logits, feats, proj = torch.randn(6, 3), torch.randn(6, 4), torch.randn(6, 4)
    a, b, lam = torch.tensor([1, 0, 3, 2, 5, 4]), torch.tensor([0, 1, 2, 3, 5, 4]), 0.3

    def mse(u, v):
        return sum((u[i, j] - v[i, j]) ** 2 for i in range(u.shape[0]) for j in range(u.shape[1])) / u.numel()

    mix_l, mix_p = lam * logits[a] + (1 - lam) * logits[b], lam * proj[a] + (1 - lam) * proj[b]
    expected = lam * (mse(logits, logits[a]) + 0.3 * mse(feats, proj[a])) + (1 - lam) * (
        mse(logits, mix_l) + 0.3 * mse(feats, mix_p))
    assert selfreg_regularizer(logits, feats, proj, a, b, lam).item() == pytest.approx(float(expected), rel=1e-5)


def test_selfreg_trains_its_projection(debug28):
    alg = make("SelfReg", debug28)
    before = copy.deepcopy(alg.projection.state_dict())
    logs = alg.update(batches(debug28))
    assert logs["penalty_selfreg"] > 0 and not torch.equal(alg.projection[0].weight, before["0.weight"])


# ---------------------------------------------------------------- CAD / CondCAD
def naive_cad(z, y, d, temperature, conditional, flipped):
    s, n, losses = z @ z.T / temperature, len(z), []
    for i in range(n):
        if not any(y[j] == y[i] for j in range(n) if j != i):
            continue
        pool = [j for j in range(n) if j != i and (not conditional or y[j] == y[i])]
        target = [j for j in pool if (d[j] != d[i]) == flipped] if conditional else [
            j for j in range(n) if j != i and (d[j] != d[i]) == flipped]
        if not target:
            continue
        log_norm = math.log(sum(math.exp(s[i, k]) for k in pool))
        value = math.log(sum(math.exp(s[i, j] - log_norm) for j in target))
        losses.append((-value if flipped else value) * temperature / 0.07)
    return sum(losses) / len(losses) if losses else 0.0


@pytest.mark.parametrize("conditional", [False, True])
@pytest.mark.parametrize("flipped", [True, False])
def test_cad_bottleneck_matches_a_loop(conditional, flipped):
    torch.manual_seed(1)
    z, y, d = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 2, (10,)), torch.arange(10) % 3
    y[0] = 5  # an anchor without another sample of its label
    for temperature, normalized in [(1.0, False), (0.1, True)]:
        zz = F.normalize(z, dim=1) if normalized else z
        expected = naive_cad(zz.numpy(), y.tolist(), d.tolist(), temperature, conditional, flipped)
        got = cad_bottleneck_loss(z.float(), y, d, temperature, conditional, flipped, normalized=normalized)
        assert abs(expected) > 1e-3 and got.item() == pytest.approx(expected, rel=1e-4)


# ---------------------------------------------------------------- IGA
def test_iga_penalty_matches_per_domain_autograd(debug28):
    g = [[torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])], [torch.tensor([3.0, 0.0]), torch.tensor([[1.0]])]]
    assert iga_penalty(g).item() == pytest.approx(1 + 1 + 1 + 1 + 1 + 1)
    alg = make("IGA", debug28, penalty=10.0)
    ref = copy.deepcopy(alg)
    logs = alg.update(batches(debug28))
    grads = [torch.autograd.grad(F.cross_entropy(ref.predict(x), y), net_params(ref)) for x, y in batches(debug28)]
    expected = sum(((a - (a + b) / 2) ** 2).sum() + ((b - (a + b) / 2) ** 2).sum() for a, b in zip(*grads))
    assert logs["penalty_iga"].item() == pytest.approx(expected.item(), rel=1e-4)


# ---------------------------------------------------------------- EQRM
@pytest.mark.parametrize("q", [0.5, 0.75, 0.95])
def test_eqrm_quantile_is_the_kde_quantile(q):
    risks = torch.tensor([0.3, 1.2, 0.7, 2.0], dtype=torch.float64)
    n = len(risks)
    kde = stats.gaussian_kde(risks.numpy(), bw_method=1.06 * n ** -0.2)  # bandwidth 1.06·std·n^(-1/5)
    expected = optimize.brentq(lambda t: kde.integrate_box_1d(-np.inf, t) - q, -10, 10, xtol=1e-10)
    assert eqrm_quantile_loss(risks, q).item() == pytest.approx(expected, abs=1e-5)
    r = risks.clone().requires_grad_()
    eqrm_quantile_loss(r, q).backward()
    assert r.grad.abs().sum() > 0


def test_eqrm_switches_from_mean_risk_to_quantile_after_burnin(debug28):
    alg = make("EQRM", debug28, eqrm_burnin_iters=2, eqrm_quantile=0.9, eqrm_lr=1e-5)
    for step in range(4):
        ref = copy.deepcopy(alg)
        logs = alg.update(batches(debug28, offset=8 * step))
        with torch.no_grad():
            risks = torch.stack([F.cross_entropy(ref.predict(x), y) for x, y in batches(debug28, offset=8 * step)])
        expected = risks.mean() if step < 2 else eqrm_quantile_loss(risks, 0.9)
        assert logs["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
        assert alg.optimizer.param_groups[0]["lr"] == (1e-3 if step < 2 else 1e-5)
    assert logs["loss"] > logs["risk_mean"]  # the 0.9-quantile lies above the mean of two risks


def test_restart_optimizer_keeps_group_lr_multiples(debug28):
    alg = make("EQRM_FTLP", debug28, ftlp_posterior="sample")  # the sampled posterior has a variance group
    restart_optimizer(alg, 1e-6)
    assert [g["lr"] for g in alg.optimizer.param_groups] == pytest.approx([1e-6, 1e-5])


# ---------------------------------------------------------------- CausIRL
def test_gaussian_kernel_mmd_matches_a_double_loop():
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)

    def k_mean(a, b):
        return np.mean([sum(math.exp(-g * float(((u - v) ** 2).sum())) for g in (1e-3, 1e-2, 0.1, 1, 10, 100, 1e3))
                        for u in a for v in b])

    expected = k_mean(x, x) + k_mean(y, y) - 2 * k_mean(x, y)
    assert gaussian_kernel_mmd(x, y).item() == pytest.approx(expected, rel=1e-5)


def test_causirl_coral_penalty_is_coral_between_pooled_random_halves(debug28):
    alg = make("CausIRL_CORAL", debug28).eval()  # eval: no dropout draws between the cuts
    bs = batches(debug28)
    torch.manual_seed(7)
    cuts = [int(torch.randint(0, 8, ())) for _ in bs]
    with torch.no_grad():
        first, second = causirl_halves([alg.featurizer(x) for x, _ in bs], cuts)
        torch.manual_seed(7)
        _, logs, _ = alg.compute_loss(bs)
    expected = coral_penalty(first, second) if min(len(first), len(second)) > 1 else torch.tensor(0.0)
    assert logs["penalty_causirl"].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-8)


# ---------------------------------------------------------------- IB
def test_ib_and_irm_penalties_match_closed_forms():
    f = torch.randn(6, 3, dtype=torch.float64)
    assert ib_penalty(f).item() == pytest.approx(np.var(f.numpy(), axis=0, ddof=1).mean())
    z, y = torch.randn(6, 4), torch.randint(0, 4, (6,))

    def dscale(zs, ys):  # d/ds CE(s·z, y) at s = 1: mean of E_softmax[z] - z_y
        return float(((F.softmax(zs, 1) * zs).sum(1) - zs[torch.arange(len(ys)), ys]).mean())

    assert irm_penalty(z, y).item() == pytest.approx(dscale(z[::2], y[::2]) * dscale(z[1::2], y[1::2]), rel=1e-5)


def test_ib_irm_weights_follow_the_annealing_schedule(debug28):
    alg = make("IB_IRM", debug28, ib_penalty_anneal_iters=1, irm_penalty_anneal_iters=2, ib_lambda=5.0, irm_lambda=7.0)
    for step, (w_ib, w_irm) in enumerate([(0.0, 1.0), (5.0, 1.0), (5.0, 7.0)]):
        logs = alg.update(batches(debug28, offset=8 * step))
        expected = logs["loss_ce"] + w_ib * logs["penalty_ib"] + w_irm * logs["penalty_irm"]
        assert logs["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


# ---------------------------------------------------------------- TRM
def test_neumann_series_matches_matrix_powers_and_the_inverse():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    h = q @ torch.diag(torch.tensor([0.2, 0.5, 0.9, 1.3, 1.7], dtype=torch.float64)) @ q.T
    v = torch.randn(5, dtype=torch.float64)
    a = torch.eye(5, dtype=torch.float64) - h
    three = (torch.eye(5, dtype=torch.float64) + a + a @ a + a @ a @ a) @ v
    torch.testing.assert_close(neumann_inverse_hvp(lambda u: h @ u, v, terms=3, bound=1e9), three)
    torch.testing.assert_close(neumann_inverse_hvp(lambda u: h @ u, v, terms=300, bound=1e9), torch.linalg.solve(h, v))
    big = 3.0 * torch.eye(5, dtype=torch.float64)  # (I - H)^k = (-2)^k: diverges; stops past the bound
    est = neumann_inverse_hvp(lambda u: big @ u, torch.ones(5, dtype=torch.float64), terms=10, bound=10.0)
    assert est.tolist() == pytest.approx([1 - 2 + 4 - 8 + 16] * 5)  # the first partial sum beyond 10


def test_trm_fits_heads_updates_alpha_and_adds_transfer_risk(debug28):
    idle = make("TRM", debug28)  # iters 200: ERM only
    heads = copy.deepcopy(idle.heads.state_dict())
    assert idle.update(batches(debug28))["loss_trm"] == 0 and torch.equal(idle.heads[0].weight, heads["0.weight"])
    alg = make("TRM", debug28, iters=0, groupdro_eta=0.1)
    logs = alg.update(batches(debug28))
    assert logs["loss_trm"] != 0 and not torch.equal(alg.heads[0].weight, heads["0.weight"])
    assert alg.alpha[0, 0] == 0 and alg.alpha[1, 1] == 0 and alg.alpha[0, 1] > 1 and alg.alpha[1, 0] > 1


# ---------------------------------------------------------------- resume
@pytest.mark.parametrize("name, overrides", [
    ("EQRM", {"eqrm_burnin_iters": 2}),  # compute_loss + counter buffer; switches after the resume
    ("Fish", {}),  # own update; the inner Adam's moments are the optimizer state
    ("Fishr", {"penalty_anneal_iters": 3}),  # EMA buffer
    ("TRM", {"iters": 1}),  # heads and alpha
])
@pytest.mark.slow
def test_resumed_copy_continues_like_an_uninterrupted_run(debug28, name, overrides):
    schedule = [batches(debug28, offset=8 * i) for i in range(4)]
    ref = make(name, debug28, **overrides)
    for b in schedule:
        ref.update(b)
    first = make(name, debug28, **overrides)
    for b in schedule[:2]:
        first.update(b)
    buf = io.BytesIO()
    torch.save({"alg": first.state_dict(), "opt": first.optimizer.state_dict(), "scaler": first.scaler.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    resumed = make(name, debug28, seed=123, **overrides)  # a new process: other initial weights
    resumed.load_state_dict(state["alg"])
    resumed.optimizer.load_state_dict(state["opt"])
    resumed.scaler.load_state_dict(state["scaler"])
    for b in schedule[2:]:
        resumed.update(b)
    for (key, a), (_, b) in zip(ref.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), key
    assert [g["lr"] for g in ref.optimizer.param_groups] == [g["lr"] for g in resumed.optimizer.param_groups]
