"""Optimizers and learning-rate schedules from hparams (domainbed/algorithms/optim.py).

The schedule's rates are checked against closed forms written here; defaults against a
hand-built DomainBed Adam; a run interrupted mid-warm-up against the uninterrupted one;
every registered algorithm either trains with a non-default optimizer and schedule or
refuses them at set-up.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from fixtures_training import killed_before_checkpoint

from domainbed import hparams_registry
from domainbed.algorithms import algorithm_names, get_algorithm_class
from domainbed.algorithms._support import restart_optimizer
from domainbed.algorithms.optim import LARS, SGD_MOMENTUM, LRSchedule, build_optimizer, in_linear_phase, optimizer_name
from domainbed.lib.errors import UserError
from domainbed.scripts import train
from domainbed.training.atomic_files import read_jsonl
from domainbed.training.integrity import load_verified


def make(name: str, data, **overrides):
    hparams = {**hparams_registry.default_hparams(name, "Debug28"), "batch_size": 8, **overrides}
    return get_algorithm_class(name)(data.input_shape, data.num_classes, 2, hparams)


def closed_form(kind: str, t: int, total: int, warmup: int) -> float:
    if kind == "constant":
        return 1.0
    if kind == "warmup_cosine" and t < warmup:
        return (t + 1) / warmup
    w = warmup if kind == "warmup_cosine" else 0
    return 0.5 * (1 + math.cos(math.pi * (t - w) / (total - w)))


@pytest.mark.parametrize("kind", ["constant", "cosine", "warmup_cosine"])
def test_learning_rate_at_chosen_steps_equals_the_closed_form(kind, debug28):
    total, warmup, lr = 40, 8, 0.02
    alg = make("ERM_FTLP", debug28, lr=lr, optimizer="sgd", lr_schedule=kind, warmup_steps=warmup,
               ftlp_posterior="sample").setup("cpu")
    alg.configure_schedule(total)
    mults = [g["lr"] / lr for g in alg.optimizer.param_groups]  # FT-LP's encoder group runs at 10x
    assert sorted(set(mults)) == [1.0, 10.0]
    for t in (0, 1, 3, 7, 8, 9, 20, 39):
        alg.apply_lr_schedule(t)
        expected = closed_form(kind, t, total, warmup)
        for group, mult in zip(alg.optimizer.param_groups, mults):
            assert group["lr"] == pytest.approx(lr * mult * expected, rel=1e-12), (t, mult)
    # Spot values worked by hand: half-way through the cosine the rate is half the base.
    if kind == "cosine":
        alg.apply_lr_schedule(20)
        assert alg.optimizer.param_groups[0]["lr"] == pytest.approx(lr / 2)
    if kind == "warmup_cosine":
        alg.apply_lr_schedule(3)
        assert alg.optimizer.param_groups[0]["lr"] == pytest.approx(lr * 4 / 8)
        alg.apply_lr_schedule(24)  # (24 - 8) / (40 - 8) = 1/2 of the cosine
        assert alg.optimizer.param_groups[0]["lr"] == pytest.approx(lr / 2)


def test_defaults_build_exactly_domainbeds_adam_and_the_schedule_never_touches_it(debug28):
    alg = make("ERM", debug28).setup("cpu")
    alg.configure_schedule(5001)
    params = [p for p in alg.featurizer.parameters() if p.requires_grad] + list(alg.classifier.parameters())
    reference = torch.optim.Adam(params, lr=alg.hparams["lr"], weight_decay=alg.hparams["weight_decay"])
    assert type(alg.optimizer) is torch.optim.Adam
    before = [dict(g) for g in alg.optimizer.param_groups]
    assert [{k: v for k, v in g.items() if k != "params"} for g in before] == \
        [{k: v for k, v in g.items() if k != "params"} for g in reference.param_groups]
    assert [list(g["params"]) for g in before] == [params]
    for t in (0, 3, 5000):
        alg.apply_lr_schedule(t)
    assert [dict(g) for g in alg.optimizer.param_groups] == before  # no initial_lr, same lr
    assert alg.lr_schedule.current_factor() == 1.0


@pytest.mark.parametrize("hparams, expected", [
    ({}, torch.optim.Adam),
    ({"optimizer": "adamw"}, torch.optim.AdamW),
    ({"optimizer": "sgd"}, torch.optim.SGD),
    ({"optimizer": "lars"}, LARS),
    ({"lars": True}, LARS),  # DomainBed HEAD's spelling
    ({"lars": True, "optimizer": "lars"}, LARS),
])
def test_optimizer_hparam_and_domainbeds_lars_switch(hparams, expected, debug28):
    alg = make("ERM", debug28, **hparams).setup("cpu")
    assert type(alg.optimizer) is expected
    if expected is torch.optim.SGD:
        assert alg.optimizer.param_groups[0]["momentum"] == SGD_MOMENTUM == 0.9
        assert alg.optimizer.param_groups[0]["nesterov"] is False


def test_contradicting_lars_and_optimizer_are_refused():
    with pytest.raises(UserError, match="lars=true and optimizer=sgd contradict"):
        optimizer_name({"lars": True, "optimizer": "sgd"})
    with pytest.raises(UserError, match="must be one of adam, adamw, sgd, lars"):
        hparams_registry.get_hparams("ERM", "Debug28", overrides={"optimizer": "rmsprop"})
    with pytest.raises(UserError, match="must be one of constant, cosine, warmup_cosine"):
        hparams_registry.get_hparams("ERM", "Debug28", overrides={"lr_schedule": "step"})


def test_lars_step_equals_the_papers_update_by_hand():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 4))
    b = torch.nn.Parameter(torch.randn(3))
    lr, beta, eta, m = 0.5, 0.01, 0.001, 0.9
    opt = LARS([w, b], lr=lr, weight_decay=beta)
    w0, b0 = w.detach().clone(), b.detach().clone()
    v_w, v_b = torch.zeros_like(w0), torch.zeros_like(b0)
    for _ in range(2):
        gw, gb = torch.randn(3, 4), torch.randn(3)
        w.grad, b.grad = gw.clone(), gb.clone()
        local = eta * w0.norm() / (gw.norm() + beta * w0.norm())
        v_w = m * v_w + lr * local * (gw + beta * w0)
        v_b = m * v_b + lr * gb  # 1-D tensors: no trust ratio, no decay
        w0, b0 = w0 - v_w, b0 - v_b
        opt.step()
        torch.testing.assert_close(w.detach(), w0)
        torch.testing.assert_close(b.detach(), b0)
    # A zero weight tensor takes the unscaled step (local rate 1), not a division by zero.
    z = torch.nn.Parameter(torch.zeros(2, 2))
    z.grad = torch.ones(2, 2)
    LARS([z], lr=0.1).step()
    torch.testing.assert_close(z.detach(), torch.full((2, 2), -0.1))


def test_schedule_start_up_errors():
    with pytest.raises(UserError, match=r"warmup_steps \(500\) must be smaller than the run's steps \(300\)"):
        LRSchedule.from_hparams({"lr_schedule": "warmup_cosine", "warmup_steps": 500}, 300)
    with pytest.raises(UserError, match="needs warmup_steps >= 1"):
        LRSchedule.from_hparams({"lr_schedule": "warmup_cosine", "warmup_steps": 0}, 300)
    with pytest.raises(UserError, match="needs the run's total steps"):
        LRSchedule.from_hparams({"lr_schedule": "cosine"}, None).factor(3)
    with pytest.raises(UserError, match="resume with the same hparams"):
        LRSchedule("cosine", 100).load_state_dict(LRSchedule("cosine", 200).state_dict())


def test_unsupported_values_are_refused_at_setup(debug28):
    with pytest.raises(UserError, match="DANN supports optimizer adam, adamw; got sgd"):
        make("DANN", debug28, optimizer="sgd").setup("cpu")
    with pytest.raises(UserError, match="linear_steps=100 has no effect on ERM"):
        make("ERM", debug28, linear_steps=100).setup("cpu")
    with pytest.raises(UserError, match="has no betas"):
        build_optimizer([torch.nn.Parameter(torch.ones(1))], {"lr": 0.1, "optimizer": "sgd"}, betas=(0.5, 0.9))


def test_linear_phase_counts_as_domainbeds_ermplusplus():
    # DomainBed's counter is 0 at the first update and the classifier alone trains while
    # it is <= linear_steps: steps 0 .. linear_steps.
    assert in_linear_phase(0, {"linear_steps": 2}) and in_linear_phase(2, {"linear_steps": 2})
    assert not in_linear_phase(3, {"linear_steps": 2})
    assert in_linear_phase(500, {}) and not in_linear_phase(501, {})


def test_restarted_optimizer_keeps_the_scheduled_rate(debug28):
    alg = make("EQRM", debug28, optimizer="adamw", lr_schedule="cosine").setup("cpu")
    alg.configure_schedule(10)
    alg.apply_lr_schedule(5)
    restart_optimizer(alg, lr=0.5)  # EQRM's restart at a new base rate
    assert alg.optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * closed_form("cosine", 5, 10, 0))
    alg.apply_lr_schedule(6)
    assert alg.optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * closed_form("cosine", 6, 10, 0))


@pytest.mark.parametrize("name", algorithm_names())
def test_every_algorithm_trains_with_sgd_and_cosine_or_refuses_at_setup(name, debug28):
    torch.manual_seed(0)
    alg = make(name, debug28, optimizer="sgd", lr_schedule="cosine", lr=0.01,
               **({"tau": 0.5} if name == "SANDMask" else {}))
    try:
        alg.setup("cpu")
    except UserError as e:
        # Refused by the algorithm's declaration (DANN's Adam betas, say), with the reason.
        assert "supports optimizer" in str(e)
        assert "sgd" not in type(alg).SUPPORTED_OPTIMIZERS, name
        return
    alg.configure_schedule(4)
    # one step of four images per domain shows the algorithm trains with SGD (67 algorithms:
    # the walk is kept small); the scheduled rate of the next step is then set by hand
    batches = [(debug28[i].x[:4], debug28[i].y[:4]) for i in (1, 2)]
    alg.apply_lr_schedule(0)
    logs = alg.update(batches)
    assert all(torch.isfinite(v) for v in logs.values()), logs
    alg.apply_lr_schedule(1)
    assert isinstance(alg.optimizer, torch.optim.SGD), type(alg.optimizer)
    factor = closed_form("cosine", 1, 4, 0)
    for group in alg.optimizer.param_groups:
        assert group["lr"] == pytest.approx(group["initial_lr"] * factor)


def run(tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    hparams = '{"batch_size": 8, "optimizer": "sgd", "lr": 0.05, "lr_schedule": "warmup_cosine", "warmup_steps": 5}'
    train.main(["--dataset", "Debug28", "--output_dir", str(out), "--steps", "9", "--checkpoint_freq", "2",
                "--hparams", hparams])
    return out


@pytest.mark.slow
def test_run_interrupted_mid_warmup_resumes_like_the_uninterrupted_one(tmp_path):
    ref = read_jsonl(run(tmp_path, "ref") / "results.jsonl")
    # the checkpoint of step 2 is saved, the run dies at step 4 (warm-up: steps 0-4)
    with killed_before_checkpoint(4), pytest.raises(KeyboardInterrupt):
        run(tmp_path, "crash")
    ckpt = load_verified(tmp_path / "crash" / "checkpoint.pt")
    assert ckpt["lr_schedule"] == {"kind": "warmup_cosine", "total_steps": 9, "warmup_steps": 5, "step": 2}
    run(tmp_path, "crash")
    resumed = read_jsonl(tmp_path / "crash" / "results.jsonl")
    assert "Resuming from step 3" in (tmp_path / "crash" / "out.txt").read_text()
    volatile = {"step_time", "mem_gb", "args"}
    assert [r["step"] for r in resumed] == [0, 2, 4, 6, 8]
    assert [{k: v for k, v in r.items() if k not in volatile} for r in resumed] == \
        [{k: v for k, v in r.items() if k not in volatile} for r in ref]
