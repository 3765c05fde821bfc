"""evaluate(): accuracy and loss against a naive loop, through the algorithm's own input path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from domainbed import hparams_registry
from domainbed.algorithms import get_algorithm_class
from domainbed.training.evaluation import evaluate


@pytest.fixture
def setting():
    torch.manual_seed(0)
    hparams = hparams_registry.default_hparams("ERM", "Debug28")
    alg = get_algorithm_class("ERM")((3, 28, 28), 3, 2, hparams).setup("cpu")
    x, y = torch.randn(20, 3, 28, 28), torch.randint(0, 3, (20,))
    return alg, x, y, DataLoader(TensorDataset(x, y), batch_size=8)


def naive(network, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Accuracy and mean cross-entropy, one example at a time."""
    network.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(len(y)):
            logits = network.predict(x[i : i + 1]).double()
            correct += int(logits.argmax(1).item() == y[i].item())
            loss += F.cross_entropy(logits, y[i : i + 1]).item()
    return correct / len(y), loss / len(y)


def test_matches_a_naive_loop_and_restores_the_mode(setting) -> None:
    alg, x, y, loader = setting
    alg.train()
    acc, loss = evaluate(alg, loader)
    assert alg.training  # the caller's mode is restored
    want_acc, want_loss = naive(alg, x, y)
    assert acc == pytest.approx(want_acc) and loss == pytest.approx(want_loss, rel=1e-5)


def test_inputs_go_through_the_algorithms_own_prepare_input(setting) -> None:
    alg, x, y, loader = setting
    calls: list[int] = []
    original = alg.prepare_input

    def blank(batch: torch.Tensor) -> torch.Tensor:  # an input path that changes the predictions
        calls.append(len(batch))
        return torch.zeros_like(original(batch))

    alg.prepare_input = blank
    acc, loss = evaluate(alg, loader)
    assert calls == [8, 8, 4]
    del alg.prepare_input
    assert (acc, loss) == pytest.approx(naive(alg, torch.zeros_like(x), y), rel=1e-5)
    # A bare predictor (SWAD's average) has no input path of its own: the algorithm's is used.
    predictor = alg.build_predictor()
    assert not hasattr(predictor, "prepare_input")
    alg.prepare_input = blank
    assert evaluate(predictor, loader, inputs=alg) == pytest.approx((acc, loss), rel=1e-5)
    del alg.prepare_input
    assert evaluate(predictor, loader) == pytest.approx(naive(predictor, x, y), rel=1e-5)


def test_empty_loader_gives_nan(setting) -> None:
    alg, x, y, _ = setting
    acc, loss = evaluate(alg, DataLoader(TensorDataset(x[:0], y[:0]), batch_size=8))
    assert math.isnan(acc) and math.isnan(loss)
