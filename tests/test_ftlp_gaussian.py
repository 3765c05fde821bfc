"""FT-LP's Gaussian terms (domainbed/algorithms/ftlp/gaussian.py), each against an independent
reference: torch.distributions."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from domainbed.algorithms.ftlp.gaussian import (
    DEFAULT_VARIANCE_FLOOR,
    gaussian_kl,
    gaussian_neg_log_prior,
    inverse_softplus,
    positive_variance,
)

# ------------------------------------------------------------------------- Gaussian KL


def _random_gaussians(seed: int, shape=(5, 7)):
    gen = torch.Generator().manual_seed(seed)
    mu_p = torch.randn(shape, generator=gen)
    mu_q = torch.randn(shape, generator=gen)
    var_p = torch.rand(shape, generator=gen) * 2 + 0.05
    var_q = torch.rand(shape[-1:], generator=gen) * 2 + 0.05  # per channel: broadcasts
    return mu_p, var_p, mu_q, var_q


def _reference_kl(mu_p, var_p, mu_q, var_q) -> torch.Tensor:
    mu_p, var_p, mu_q, var_q = torch.broadcast_tensors(
        *(t.double() for t in (mu_p, var_p, mu_q, var_q))
    )
    return kl_divergence(Normal(mu_p, var_p.sqrt()), Normal(mu_q, var_q.sqrt()))


def test_gaussian_kl_matches_torch_distributions() -> None:
    mu_p, var_p, mu_q, var_q = _random_gaussians(0)
    expected = _reference_kl(mu_p, var_p, mu_q, var_q).float()
    got = gaussian_kl(mu_p, var_p, mu_q, var_q)
    assert got.shape == (5, 7) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        gaussian_kl(mu_p, var_p, mu_q, var_q, reduction="mean"), expected.mean(), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        gaussian_kl(mu_p, var_p, mu_q, var_q, reduction="sum"), expected.sum(), rtol=1e-5, atol=1e-6
    )


def test_gaussian_kl_bf16_autocast_computes_in_fp32() -> None:
    mu_p, var_p, mu_q, var_q = (t.bfloat16() for t in _random_gaussians(3))
    # Reference from the very same bf16-rounded values, in fp64: only the arithmetic
    # precision differs, so fp32 arithmetic must meet the fp32 tolerances.
    expected = _reference_kl(mu_p, var_p, mu_q, var_q).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = gaussian_kl(mu_p, var_p, mu_q, var_q)
        got_mean = gaussian_kl(mu_p, var_p, mu_q, var_q, reduction="mean")
    assert got.dtype == torch.float32 and got_mean.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_mean, expected.mean(), rtol=1e-5, atol=1e-6)


def test_gaussian_kl_is_zero_with_zero_gradient_at_p_equals_q() -> None:
    mu, var, _, _ = _random_gaussians(4)
    mu_p = mu.clone().requires_grad_(True)
    var_p = var.clone().requires_grad_(True)
    kl = gaussian_kl(mu_p, var_p, mu, var, reduction="sum")
    assert kl.item() == pytest.approx(0.0, abs=1e-6)
    kl.backward()
    torch.testing.assert_close(mu_p.grad, torch.zeros_like(mu), rtol=0, atol=1e-6)
    torch.testing.assert_close(var_p.grad, torch.zeros_like(var), rtol=0, atol=1e-6)


def test_gaussian_kl_gradient_matches_reference() -> None:
    mu_p, var_p, mu_q, var_q = _random_gaussians(5)
    ours = [t.clone().requires_grad_(True) for t in (mu_p, var_p, mu_q, var_q)]
    ref = [t.double().clone().requires_grad_(True) for t in (mu_p, var_p, mu_q, var_q)]
    gaussian_kl(*ours, reduction="mean").backward()
    _reference_kl(*ref).mean().backward()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad.float(), rtol=1e-4, atol=1e-6)


def test_gaussian_kl_rejects_unknown_reduction() -> None:
    mu_p, var_p, mu_q, var_q = _random_gaussians(6)
    with pytest.raises(ValueError, match="reduction"):
        gaussian_kl(mu_p, var_p, mu_q, var_q, reduction="batchmean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction"):
        gaussian_neg_log_prior(mu_p, mu_q, var_q, reduction="avg")  # type: ignore[arg-type]


# ----------------------------------------------------------------- MAP (negative log prior)


def test_neg_log_prior_matches_normal_log_prob() -> None:
    mu, _, mu_q, var_q = _random_gaussians(7)
    var_q_b = var_q.expand_as(mu_q)
    expected = -Normal(mu_q.double(), var_q_b.double().sqrt()).log_prob(mu.double())
    expected = (expected - 0.5 * math.log(2 * math.pi)).float()
    got = gaussian_neg_log_prior(mu, mu_q, var_q)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        gaussian_neg_log_prior(mu, mu_q, var_q, reduction="mean"), expected.mean(), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        gaussian_neg_log_prior(mu, mu_q, var_q, reduction="sum"), expected.sum(), rtol=1e-5, atol=1e-6
    )


def test_neg_log_prior_is_kl_minus_parameter_free_entropy() -> None:
    # KL(N(mu, s) || Q) = -H(N(mu, s)) - E[log Q]; with the posterior variance s fixed,
    # KL and -log Q(mu) differ by a term that does not depend on mu.
    mu, _, mu_q, var_q = _random_gaussians(8)
    s = torch.full_like(mu, 1e-3)
    diff = gaussian_kl(mu, s, mu_q, var_q) - gaussian_neg_log_prior(mu, mu_q, var_q)
    expected = 0.5 * (s / var_q - torch.log(s) - 1.0)  # independent of mu
    torch.testing.assert_close(diff, expected.expand_as(diff), rtol=1e-4, atol=1e-5)


def test_neg_log_prior_bf16_autocast_is_fp32() -> None:
    mu, _, mu_q, var_q = (t.bfloat16() for t in _random_gaussians(9))
    expected = 0.5 * ((mu.double() - mu_q.double()) ** 2 / var_q.double() + var_q.double().log())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = gaussian_neg_log_prior(mu, mu_q, var_q)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- variance parameterisation


def test_positive_variance_and_inverse_round_trip() -> None:
    targets = torch.tensor([2e-5, 1e-3, 0.1, 1.0, 5.0, 50.0], dtype=torch.float64)
    raw = inverse_softplus(targets)
    assert raw.dtype == torch.float64
    torch.testing.assert_close(positive_variance(raw), targets, rtol=1e-9, atol=0.0)
    # Float input gives a default-dtype tensor; floor=0 is the plain inverse of softplus.
    raw_f = inverse_softplus(0.1)
    assert raw_f.dtype == torch.float32
    assert positive_variance(raw_f).item() == pytest.approx(0.1, rel=1e-6)
    assert inverse_softplus(1.0, floor=0.0).item() == pytest.approx(math.log(math.e - 1.0), rel=1e-6)
    # The floor is honoured: softplus(raw) is the target minus the floor.
    softplus_raw = torch.nn.functional.softplus(inverse_softplus(0.1))
    assert softplus_raw.item() == pytest.approx(0.1 - DEFAULT_VARIANCE_FLOOR, rel=1e-6)


def test_positive_variance_stays_above_floor() -> None:
    raw = torch.tensor([-1e3, -10.0, 0.0, 10.0])
    var = positive_variance(raw, floor=1e-5)
    assert (var >= 1e-5).all()
    assert var[0].item() == pytest.approx(1e-5, rel=1e-6)


def test_inverse_softplus_rejects_unreachable_values() -> None:
    with pytest.raises(ValueError, match="floor"):
        inverse_softplus(1e-6)  # below the default floor
    with pytest.raises(ValueError):
        inverse_softplus(torch.tensor([0.1, 0.0]))
    with pytest.raises(ValueError):
        positive_variance(torch.zeros(2), floor=-1.0)
