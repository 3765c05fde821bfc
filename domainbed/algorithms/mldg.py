"""MLDG: meta-learning for domain generalisation (Li et al., arXiv 1710.03463, Algorithm 1),
first-order, as DomainBed runs it.

Each update splits the training domains at random into meta-train domains and
``n_meta_test`` meta-test domains and pairs each meta-train domain ``i`` with a meta-test
domain ``j`` (cycling through them). For each pair, a copy of the network takes one fresh
Adam step (a fresh step of hparam ``optimizer``'s kind) on ``L_i``; the gradient accumulated for the real step is
``(G_i + mldg_beta · G_j) / n_domains``, where ``G_i = ∇L_i(θ)`` and ``G_j = ∇L_j`` at the
copy's stepped weights (no second derivatives).

``n_meta_test`` is capped at ``n_domains - 1``: DomainBed's default of 2 leaves no
meta-train domain when there are only 2 training domains, and its update then does nothing.
"""

from __future__ import annotations

import copy
from itertools import cycle
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from domainbed.algorithms.base import Algorithm, Minibatches, Predictor, cross_entropy
from domainbed.algorithms.optim import build_optimizer
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.errors import UserError
from domainbed.lib.hparam import HParam, choice, log_uniform


def meta_train_test_pairs(perm: list[int], n_meta_test: int) -> list[tuple[int, int]]:
    """The last ``n_meta_test`` domains of ``perm`` are meta-test, the others meta-train; each
    meta-train domain is paired with the next meta-test domain, cyclically."""
    n = len(perm)
    if not 1 <= n_meta_test < n:
        raise UserError(f"n_meta_test must be between 1 and {n - 1} for {n} training domains; got {n_meta_test}")
    meta_train, meta_test = perm[: n - n_meta_test], perm[n - n_meta_test :]
    return list(zip(meta_train, cycle(meta_test)))


def first_step(params: list[nn.Parameter], grads: list[Tensor | None], hparams: Mapping[str, Any], lr: float) -> None:
    """One step of a fresh optimizer of ``hparams`` (DomainBed: ``torch.optim.Adam``) at ``lr``
    on ``params`` with ``grads``."""
    for p, g in zip(params, grads):
        p.grad = g
    opt = build_optimizer(params, hparams, lr=lr)
    opt.step()
    for p in params:
        p.grad = None


@register_algorithm
class MLDG(Algorithm):
    """First-order MLDG; see the module docstring."""

    HPARAMS = {
        "mldg_beta": HParam(1.0, log_uniform(-1, 1), "weight of the meta-test loss"),
        "n_meta_test": HParam(2, choice(1, 2), "meta-test domains per update (capped at n_domains - 1)"),
    }

    def _trainable(self, network: nn.Module) -> list[nn.Parameter]:
        return [p for p in network.parameters() if p.requires_grad]

    def update(self, minibatches: Minibatches, unlabeled: list[Tensor] | None = None) -> dict[str, Tensor]:
        n = len(minibatches)
        if n < 2:
            raise UserError("MLDG needs at least 2 training domains (one meta-train, one meta-test)")
        minibatches = self.begin_update(minibatches)
        assert self.optimizer is not None and self.scaler is not None
        self.optimizer.zero_grad(set_to_none=True)  # before the copies: they need no gradients
        h = self.hparams
        # The inner step runs at the outer step's scheduled rate (exactly h["lr"] when constant).
        beta, lr = float(h["mldg_beta"]), float(h["lr"]) * self.lr_schedule.current_factor()
        pairs = meta_train_test_pairs(torch.randperm(n).tolist(), min(int(h["n_meta_test"]), n - 1))
        network = Predictor({"featurizer": self.featurizer, "classifier": self.classifier})
        params = self._trainable(network)
        total = [torch.zeros_like(p) for p in params]
        # Gradients are of the scaled losses (fp16); the inner Adam step needs them unscaled.
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        loss_i_sum = torch.zeros((), device=self.device)
        loss_j_sum = torch.zeros((), device=self.device)
        for i, j in pairs:
            (xi, yi), (xj, yj) = minibatches[i], minibatches[j]
            m = min(len(xi), len(xj))
            inner = copy.deepcopy(network)
            inner_params = self._trainable(inner)
            with self.autocast():
                loss_i = cross_entropy(inner.predict(xi[:m]), yi[:m])
            g_i = torch.autograd.grad(self.scaler.scale(loss_i), inner_params, allow_unused=True)
            first_step(inner_params, [None if g is None else g / scale for g in g_i], h, lr)
            with self.autocast():
                loss_j = cross_entropy(inner.predict(xj[:m]), yj[:m])
            g_j = torch.autograd.grad(self.scaler.scale(loss_j), inner_params, allow_unused=True)
            for acc, gi, gj in zip(total, g_i, g_j):
                if gi is not None:
                    acc.add_(gi, alpha=1.0 / n)
                if gj is not None:
                    acc.add_(gj, alpha=beta / n)
            loss_i_sum += loss_i.detach()
            loss_j_sum += loss_j.detach()
        for p, g in zip(params, total):
            p.grad = g
        self.scaler.step(self.optimizer)
        self.scaler.update()
        objective = (loss_i_sum + beta * loss_j_sum) / n
        return {"loss": objective, "loss_meta_train": loss_i_sum / len(pairs), "loss_meta_test": loss_j_sum / len(pairs)}
