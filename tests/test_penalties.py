"""The functional penalties of the algorithms (domainbed/algorithms/penalties.py), each against
an independent reference: NumPy for CORAL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from domainbed.algorithms.penalties import coral_penalty, fp32_region, to_fp32


def _numpy_coral(x: np.ndarray, y: np.ndarray) -> float:
    """CORAL in float64 NumPy, as the reference."""
    mean_term = np.mean((x.mean(0) - y.mean(0)) ** 2)
    cov_term = np.mean((np.cov(x, rowvar=False, ddof=1) - np.cov(y, rowvar=False, ddof=1)) ** 2)
    return float(mean_term + cov_term)


# ------------------------------------------------------------------------------ CORAL


def test_coral_matches_numpy() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(17, 6, generator=gen)
    y = 2.0 * torch.randn(11, 6, generator=gen) + 0.5
    expected = _numpy_coral(x.double().numpy(), y.double().numpy())
    got = coral_penalty(x, y)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_coral_zero_for_identical_inputs_and_differentiable() -> None:
    x = torch.randn(8, 4, requires_grad=True)
    assert coral_penalty(x, x.detach().clone()).item() == pytest.approx(0.0, abs=1e-7)
    y = torch.randn(8, 4)
    coral_penalty(x, y).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_coral_bf16_under_autocast_is_fp32() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 5, generator=gen).bfloat16()
    y = torch.randn(16, 5, generator=gen).bfloat16()
    expected = _numpy_coral(x.double().numpy(), y.double().numpy())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = coral_penalty(x, y)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "x, y",
    [
        (torch.randn(4), torch.randn(4)),  # not 2-D
        (torch.randn(4, 3), torch.randn(4, 2)),  # widths differ
        (torch.randn(1, 3), torch.randn(4, 3)),  # one sample: no unbiased covariance
    ],
)
def test_coral_rejects_bad_shapes(x: torch.Tensor, y: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        coral_penalty(x, y)


# ------------------------------------------------------------------------- fp32 helpers


def test_to_fp32_promotes_half_precisions_and_keeps_float64() -> None:
    assert to_fp32(torch.ones(2, dtype=torch.bfloat16)).dtype == torch.float32
    assert to_fp32(torch.ones(2, dtype=torch.float16)).dtype == torch.float32
    assert to_fp32(torch.ones(2, dtype=torch.float64)).dtype == torch.float64


def test_fp32_region_switches_autocast_off() -> None:
    a = torch.randn(3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
        with fp32_region(a):
            assert (a @ a).dtype == torch.float32
