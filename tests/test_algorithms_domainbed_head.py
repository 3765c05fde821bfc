"""DomainBed HEAD's newer algorithms (ERMPlusPlus, URM, RDM, Transfer, ADRMX): each loss
against an independent computation (loops, closed forms, a hand-written reference update),
their schedules, resuming through the training loop's checkpoints, and command-line runs."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_algorithms import make
from fixtures_training import killed_before_checkpoint

from domainbed import hparams_registry
from domainbed.algorithms import urm as urm_module
from domainbed.algorithms.adrmx import remix_pairs, supcon_lambda_loss
from domainbed.algorithms.ermplusplus import ERMPlusPlus
from domainbed.algorithms.rdm import RDM_GAMMAS, rdm_matching_penalty, rdm_variance_penalty, worst_domain_losses
from domainbed.algorithms.transfer import project_to_ball, risk_gap
from domainbed.algorithms.urm import uniform_noise_like, urm_discriminator_loss, urm_generator_loss
from domainbed.scripts import train
from domainbed.training.atomic_files import read_jsonl

NEWER = ["ERMPlusPlus", "URM", "RDM", "Transfer", "ADRMX"]


def batches(data, offset=0, n=8):
    offset %= len(data[1].x) - n + 1  # Debug28 domains hold 32 images
    return [(data[i].x[offset:offset + n], data[i].y[offset:offset + n]) for i in (1, 2)]


def params_of(*modules):
    return [p.detach().clone() for m in modules for p in m.parameters()]


# ---------------------------------------------------------------- RDM
def test_rdm_matching_penalty_matches_a_double_loop():
    gen = torch.Generator().manual_seed(0)
    worst = torch.rand(5, generator=gen, dtype=torch.float64) * 2
    pooled = torch.rand(12, generator=gen, dtype=torch.float64) * 3

    def k(a, b):
        return sum(math.exp(-g * (a - b) ** 2) for g in RDM_GAMMAS)

    def mean_k(u, v):
        return sum(k(a, b) for a in u.tolist() for b in v.tolist()) / (len(u) * len(v))

    expected = mean_k(worst, worst) + mean_k(pooled, pooled) - 2 * mean_k(worst, pooled)
    assert rdm_matching_penalty(worst, pooled).item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert rdm_matching_penalty(pooled, pooled).item() == pytest.approx(0.0, abs=1e-9)


def test_rdm_variance_and_worst_domain():
    losses = torch.tensor([0.1, 0.5, 0.3, 2.0, 1.0, 0.2])
    risks, worst = worst_domain_losses(losses, [3, 3])
    assert torch.allclose(risks, torch.tensor([0.3, 3.2 / 3])) and torch.equal(worst, losses[3:])
    risks, worst = worst_domain_losses(losses, [4, 2])  # unequal batches
    assert torch.equal(worst, losses[:4]) and risks.shape == (2,)
    expected = np.var(losses.numpy(), ddof=1) + np.var(losses[3:].numpy(), ddof=1)
    assert rdm_variance_penalty(losses[3:], losses).item() == pytest.approx(expected, rel=1e-6)


def test_rdm_penalties_switch_on_after_annealing_and_adam_restarts_at_rdm_lr(debug28):
    alg = make("RDM", debug28, rdm_penalty_anneal_iters=2)
    for i in range(2):
        logs = alg.update(batches(debug28, 8 * i))
        assert logs["rdm_weight"] == 0 and logs["loss"] == pytest.approx(logs["loss_ce"].item())
        assert alg.optimizer.param_groups[0]["lr"] == alg.hparams["lr"]
    logs = alg.update(batches(debug28, 16))
    h = alg.hparams
    expected = logs["loss_ce"] + h["rdm_lambda"] * logs["penalty_rdm_match"] + h["variance_weight"] * logs["penalty_rdm_var"]
    assert logs["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert {g["lr"] for g in alg.optimizer.param_groups} == {h["rdm_lr"]}
    assert all(s["step"] == 1 for s in alg.optimizer.state.values())  # moments restarted at the switch


def test_rdm_loss_equals_an_independent_computation(debug28):
    alg = make("RDM", debug28, rdm_penalty_anneal_iters=0)
    alg.train()
    mb = batches(debug28)
    loss, logs, _ = alg.compute_loss(mb)
    with torch.no_grad():
        per_domain = [F.cross_entropy(alg.classifier(alg.featurizer(x)), y, reduction="none") for x, y in mb]
    means = [p.mean().item() for p in per_domain]
    worst = per_domain[int(np.argmax(means))]
    pooled = torch.cat(per_domain)
    expected = (np.mean(means) + alg.hparams["rdm_lambda"] * rdm_matching_penalty(worst, pooled).item()
                + alg.hparams["variance_weight"] * (pooled.var() + worst.var()).item())
    assert loss.item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- URM
def test_urm_losses_match_closed_forms():
    noise_logits = torch.tensor([0.3, -1.2, 2.0])
    feat_logits = torch.tensor([[1.5], [-0.4]])
    # BCE(z, 1) = softplus(-z), BCE(z, 0) = softplus(z).
    gen = sum(math.log1p(math.exp(-z)) for z in (1.5, -0.4)) / 2
    assert urm_generator_loss(feat_logits).item() == pytest.approx(gen, rel=1e-6)
    real = sum(math.log1p(math.exp(-z)) for z in (0.3, -1.2, 2.0)) / 3
    fake = sum(math.log1p(math.exp(z)) for z in (1.5, -0.4)) / 2
    assert urm_discriminator_loss(noise_logits, feat_logits, 0.1).item() == pytest.approx(real + 0.1 * fake, rel=1e-6)
    # Label smoothing s: targets in [1 - s, 1] and [0, s]; s = 0.5 moves the loss, stays finite.
    smoothed = urm_discriminator_loss(noise_logits, feat_logits, 0.1, smoothing=0.5)
    assert math.isfinite(smoothed.item()) and smoothed.item() != pytest.approx(real + 0.1 * fake)


@pytest.mark.parametrize("activation, lo, hi", [("tanh", -1.0, 1.0), ("relu", 0.0, 1.0), ("sigmoid", 0.0, 1.0)])
def test_urm_noise_is_uniform_on_the_activation_box(activation, lo, hi):
    torch.manual_seed(0)
    noise = uniform_noise_like(torch.zeros(20000, 4), activation)
    assert noise.min() >= lo and noise.max() < hi
    assert noise.mean().item() == pytest.approx((lo + hi) / 2, abs=0.01)
    assert noise.var().item() == pytest.approx((hi - lo) ** 2 / 12, rel=0.03)


def test_urm_update_equals_two_adams_by_hand(debug28, monkeypatch):
    alg = make("URM", debug28, urm_adv_lambda=0.15)
    ref = copy.deepcopy(alg)
    mb = batches(debug28)
    x, y = torch.cat([b[0] for b in mb]), torch.cat([b[1] for b in mb])
    noise = torch.rand(len(x), alg.featurizer.n_outputs) * 2 - 1
    monkeypatch.setattr(urm_module, "uniform_noise_like", lambda feats, activation: noise)
    alg.update(mb)

    h = ref.hparams
    net = list(ref.featurizer.parameters()) + list(ref.classifier.parameters())
    net_opt = torch.optim.Adam(net, lr=h["lr"], weight_decay=h["weight_decay"])
    disc_opt = torch.optim.Adam(ref.discriminator.parameters(), lr=h["urm_discriminator_lr"], weight_decay=h["weight_decay"])
    ref.train()
    feats = ref.featurizer(x)
    assert feats.abs().max() < 1  # tanh output
    ones = torch.ones(len(x))
    loss = F.cross_entropy(ref.classifier(feats), y) + 0.15 * F.binary_cross_entropy_with_logits(
        ref.discriminator(feats).squeeze(1), ones)
    net_opt.zero_grad()
    loss.backward()
    net_opt.step()
    d_loss = (F.binary_cross_entropy_with_logits(ref.discriminator(noise).squeeze(1), ones)
              + 0.15 * F.binary_cross_entropy_with_logits(ref.discriminator(feats.detach()).squeeze(1), torch.zeros(len(x))))
    disc_opt.zero_grad()
    d_loss.backward()
    disc_opt.step()
    for a, b in zip(params_of(alg.featurizer, alg.classifier, alg.discriminator),
                    params_of(ref.featurizer, ref.classifier, ref.discriminator)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_urm_predictor_keeps_the_bounded_activation(debug28):
    alg = make("URM", debug28, urm_generator_output="relu")
    feats = alg.build_predictor().featurizer(debug28[0].x[:4])
    assert feats.min() >= 0
    with pytest.raises(Exception, match="urm_generator_output"):
        hparams_registry.get_hparams("URM", "Debug28", overrides={"urm_generator_output": "identity"})


# ---------------------------------------------------------------- Transfer
def test_risk_gap_and_projection():
    assert risk_gap(torch.tensor([0.5, 2.0, 1.0])).item() == pytest.approx(1.5)
    center, moved = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    offsets = [torch.randn_like(p) for p in center.parameters()]
    with torch.no_grad():
        for p, c, o in zip(moved.parameters(), center.parameters(), offsets):
            p.copy_(c + o)
    dist = math.sqrt(sum(o.pow(2).sum().item() for o in offsets))
    before = params_of(moved)
    assert project_to_ball(moved, center, dist + 1).item() == pytest.approx(dist, rel=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(before, params_of(moved)))  # inside: unchanged
    project_to_ball(moved, center, dist / 4)
    for p, c, o in zip(moved.parameters(), center.parameters(), offsets):
        torch.testing.assert_close(p, c + o / 4)  # on the sphere, along the same direction


def domainbed_transfer_update(alg, mb, opt):
    """Transfer's update as DomainBed's code runs it with gda=false (features recomputed at
    each ascent step), written out by hand on a copy of the algorithm; ``opt`` is its Adam."""
    h = alg.hparams
    alg.train()
    x, y = torch.cat([b[0] for b in mb]), torch.cat([b[1] for b in mb])

    def gap():
        losses = [F.cross_entropy(alg.adv_classifier(alg.featurizer(xd)), yd) for xd, yd in mb]
        return max(losses) - min(losses)

    opt.zero_grad(set_to_none=True)
    F.cross_entropy(alg.classifier(alg.featurizer(x)), y).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    (h["t_lambda"] * gap()).backward()
    opt.step()
    alg.adv_classifier.load_state_dict(alg.classifier.state_dict())
    for _ in range(h["d_steps_per_g"]):
        grads = torch.autograd.grad(-h["t_lambda"] * gap(), list(alg.adv_classifier.parameters()))
        with torch.no_grad():
            for p, g in zip(alg.adv_classifier.parameters(), grads):
                p -= h["lr_d"] * g
            dist = torch.sqrt(sum((a - c).pow(2).sum() for a, c in zip(alg.adv_classifier.parameters(),
                                                                           alg.classifier.parameters())))
            if dist > h["delta"]:
                for a, c in zip(alg.adv_classifier.parameters(), alg.classifier.parameters()):
                    a.copy_(c + h["delta"] / dist * (a - c))


def test_transfer_update_equals_domainbeds_procedure(debug28):
    # mnist_cnn has no BatchNorm or dropout, so recomputing features per ascent step changes nothing.
    alg = make("Transfer", debug28, d_steps_per_g=3, delta=0.05, lr_d=0.5)
    ref = copy.deepcopy(alg)
    opt = torch.optim.Adam(list(ref.featurizer.parameters()) + list(ref.classifier.parameters()),
                           lr=ref.hparams["lr"], weight_decay=ref.hparams["weight_decay"])
    for offset in (0, 8):
        mb = batches(debug28, offset)
        logs = alg.update(mb)
        domainbed_transfer_update(ref, mb, opt)
    for a, b in zip(params_of(alg.featurizer, alg.classifier, alg.adv_classifier),
                    params_of(ref.featurizer, ref.classifier, ref.adv_classifier)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert logs["gap_adv"] >= 0
    # The projection binds: the adversary sits on the sphere of radius delta.
    from domainbed.algorithms.transfer import parameter_distance

    assert parameter_distance(alg.adv_classifier, alg.classifier).item() == pytest.approx(0.05, rel=1e-4)


def test_transfer_gda_trains_featurizer_and_classifier_with_plain_sgd(debug28):
    alg = make("Transfer", debug28, gda=True, d_steps_per_g=1)
    assert type(alg.optimizer) is torch.optim.SGD
    before = params_of(alg.featurizer, alg.classifier)
    alg.update(batches(debug28))
    assert all(not torch.equal(a, b) for a, b in zip(before, params_of(alg.featurizer, alg.classifier))
               if a.dim() > 1)


# ---------------------------------------------------------------- ADRMX
def supcon_by_loops(features, labels, domains, lam=0.5, temperature=0.07):
    z = F.normalize(features.double(), dim=1)
    n = len(z)
    total, valid = 0.0, 0
    for i in range(n):
        e = {j: (lam if domains[j] == domains[i] else 1 - lam) * math.exp(float(z[i] @ z[j]) / temperature)
             for j in range(n) if j != i}
        denom = sum(e.values()) + 1e-5
        pos = [j for j in e if labels[j] == labels[i]]
        if not pos:
            continue
        total += sum(math.log(e[j] / denom + 1e-5) for j in pos) / len(pos)
        valid += 1
    return -total / (valid + 1)


def test_supcon_lambda_loss_matches_a_loop():
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(10, 6, generator=gen)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 1, 2, 0])  # class 3 has no positive: skipped
    domains = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, 0])
    for lam in (0.5, 0.8):
        got = supcon_lambda_loss(features, labels, domains, lam=lam)
        assert got.item() == pytest.approx(supcon_by_loops(features, labels, domains, lam), rel=1e-5)


def test_remix_pairs_are_two_distinct_samples_of_one_class():
    torch.manual_seed(0)
    labels = torch.tensor([2, 0, 2, 1, 0, 2, 3])
    i, j = remix_pairs(labels, num_classes=5)
    assert len(i) == 2  # classes 0 and 2 have two samples or more
    assert torch.equal(labels[i], labels[j]) and bool((i != j).all())
    assert set(labels[i].tolist()) == {0, 2}


def test_adrmx_alternates_and_its_generator_loss_is_the_weighted_sum(debug28):
    alg = make("ADRMX", debug28)
    disc = lambda: params_of(alg.discriminator)  # noqa: E731
    gen = lambda: params_of(alg.featurizer, alg.featurizer_domain, alg.classifier, alg.classifier_inv, alg.classifier_domain)  # noqa: E731
    # d_steps_per_g_step = 2: update n (from 1) trains the discriminator when n % 3 < 2, as in
    # DomainBed (its counter is incremented first): updates 1, 3, 4, 6, ...; 2, 5, ... train the rest.
    for step in (1, 2, 3, 4, 5):
        d0, g0 = disc(), gen()
        out = alg.update(batches(debug28, 8 * step))
        disc_moved = any(not torch.equal(a, b) for a, b in zip(d0, disc()))
        gen_moved = any(not torch.equal(a, b) for a, b in zip(g0, gen()))
        disc_step = step % 3 < 2
        assert (disc_moved, gen_moved) == (disc_step, not disc_step), step
        assert out["disc_step"] == float(disc_step)
        if not disc_step:
            logs = out
    h = alg.hparams
    expected = (logs["loss_clf_label"] + logs["loss_clf_inv"] + h["dclf_lambda"] * logs["loss_domain"]
                + h["rmxd_lambda"] * logs["loss_remix"] + h["cnt_lambda"] * (logs["loss_cnt_label"] + logs["loss_cnt_inv"])
                - h["disc_lambda"] * logs["loss_disc"])
    assert logs["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_adrmx_predicts_with_the_label_featurizer_and_first_head(debug28):
    alg = make("ADRMX", debug28).eval()
    x = debug28[0].x[:4]
    torch.testing.assert_close(alg.predict(x), alg.classifier(alg.featurizer(x)))


# ---------------------------------------------------------------- ERM++
def test_ermplusplus_linear_phase_then_full_training_then_average(debug28, monkeypatch):
    monkeypatch.setattr(ERMPlusPlus, "SMA_START", 3)
    alg = make("ERMPlusPlus", debug28, linear_steps=1, linear_lr=1e-2)
    snapshots = []
    for step in range(6):
        feat0, head0 = params_of(alg.featurizer), params_of(alg.classifier)
        logs = alg.update(batches(debug28, 8 * step))
        assert math.isfinite(logs["loss"])
        feat_moved = any(not torch.equal(a, b) for a, b in zip(feat0, params_of(alg.featurizer)))
        head_moved = any(not torch.equal(a, b) for a, b in zip(head0, params_of(alg.classifier)))
        linear = step <= 1  # updates done 0 and 1 are <= linear_steps
        assert (feat_moved, head_moved, bool(logs["linear_phase"])) == (not linear, True, linear), step
        assert alg.optimizer.param_groups[1]["lr"] == (1e-2 if linear else alg.hparams["lr"])
        snapshots.append({f"featurizer.{k}": v.detach().clone() for k, v in alg.featurizer.state_dict().items()}
                         | {f"classifier.{k}": v.detach().clone() for k, v in alg.classifier.state_dict().items()})
        # Before update SMA_START (3) the average is a copy of the network; from then on the
        # mean of the networks after updates SMA_START - 1, SMA_START, ... (snapshots[1:]).
        done = step + 1
        window = snapshots[-1:] if done < 3 else snapshots[1:]
        for key, value in alg.average.state_dict().items():
            expected = torch.stack([s[key].float() for s in window]).mean(0)
            torch.testing.assert_close(value.float(), expected, rtol=1e-5, atol=1e-6)
    x = debug28[0].x[:4]
    alg.eval()
    torch.testing.assert_close(alg.predict(x), alg.build_predictor()(x))
    assert not torch.allclose(alg.predict(x), alg.classifier(alg.featurizer(x)))


# ---------------------------------------------------------------- training loop: command line and resume
RESUME_HPARAMS = {
    "ERMPlusPlus": {"linear_steps": 2},
    "URM": {},
    "RDM": {"rdm_penalty_anneal_iters": 3},
    "Transfer": {"d_steps_per_g": 2},
    "ADRMX": {},
}


def run(tmp_path, name, folder, hparams):
    import json

    out = tmp_path / folder
    train.main(["--dataset", "Debug28", "--algorithm", name, "--output_dir", str(out), "--steps", "7",
                "--checkpoint_freq", "2", "--hparams", json.dumps({"batch_size": 8, **hparams})])
    return out


def comparable(records):
    return [{k: v for k, v in r.items() if k not in ("step_time", "mem_gb", "args")} for r in records]


@pytest.mark.slow
@pytest.mark.parametrize("name", NEWER)
def test_trains_from_the_command_line_and_resumes_like_an_uninterrupted_run(tmp_path, monkeypatch, name):
    monkeypatch.setattr(ERMPlusPlus, "SMA_START", 3)  # averaging starts before the crash
    hparams = RESUME_HPARAMS[name]
    ref = read_jsonl(run(tmp_path, name, "ref", hparams) / "results.jsonl")
    assert [r["step"] for r in ref] == [0, 2, 4, 6] and all(math.isfinite(r["loss"]) for r in ref)
    with killed_before_checkpoint(4), pytest.raises(KeyboardInterrupt):
        run(tmp_path, name, "crash", hparams)
    out = run(tmp_path, name, "crash", hparams)
    assert "Resuming from step 3" in (out / "out.txt").read_text()
    assert comparable(read_jsonl(out / "results.jsonl")) == comparable(ref)


@pytest.mark.slow
@pytest.mark.parametrize("name", NEWER + ["URM_FTLP", "RDM_FTLP", "ERMPlusPlus_FTLP"])
def test_trains_on_rotated_mnist_subset(tmp_path, name):
    out = tmp_path / name
    train.main(["--dataset", "RotatedMNISTSubset", "--algorithm", name, "--output_dir", str(out), "--steps", "3",
                "--checkpoint_freq", "2", "--test_envs", "5", "--hparams", '{"batch_size": 4}'])
    records = read_jsonl(out / "results.jsonl")
    assert (out / "done").exists() and [r["step"] for r in records] == [0, 2]
    assert records[0]["hparams"]["backbone"] == "efficientnet_lite0"
    assert all(math.isfinite(r["loss"]) for r in records)


def test_ftlp_variants_exist_exactly_for_single_pass_losses():
    from domainbed.algorithms import algorithm_names

    names = set(algorithm_names())
    assert {"ERMPlusPlus_FTLP", "URM_FTLP", "RDM_FTLP"} <= names
    assert not {"Transfer_FTLP", "ADRMX_FTLP"} & names


@pytest.mark.slow
def test_the_five_run_in_a_sweep_and_tabulate(tmp_path):
    """`sweep launch` with the real trainer runs each of the five to `done`, and the tables
    have a cell for each."""
    from domainbed.scripts import collect_results, sweep

    out = tmp_path / "sweep"
    code = sweep.main(["launch", "--datasets", "Debug28", "--algorithms", *NEWER, "--n_hparams", "1", "--n_trials", "1",
                       "--single_test_envs", "--test_envs_subset", "0", "--steps", "3", "--checkpoint_freq", "2",
                       "--hparams", '{"batch_size": 4}', "--output_dir", str(out), "--command_launcher", "local",
                       "--skip_confirmation", "--no_progress", "--threads_per_job", "1"])
    assert code == 0
    folders = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(folders) == len(NEWER) and all((p / "done").exists() for p in folders)
    assert {read_jsonl(p / "results.jsonl")[-1]["args"]["algorithm"] for p in folders} == set(NEWER)
    table = collect_results.collect(str(out), selection=["oracle"], fmt="text")
    for name in NEWER:
        assert any(line.split() and line.split()[0] == name for line in table.splitlines()), table
