"""RDM: Risk Distribution Matching (Nguyen et al., arXiv 2310.18598).

Instead of aligning features, RDM aligns the *distributions of per-sample risks* across
training domains: the losses of the worst domain (the one with the highest mean risk in
the minibatch) should be distributed like the losses of all domains pooled. The match is
measured by the biased MMD² under a sum of Gaussian kernels (bandwidths
:data:`RDM_GAMMAS`), on the scalar losses; a variance term keeps both distributions narrow::

    loss = mean_d R_d + w_match · MMD²(ℓ_worst, ℓ_all) + w_var · (Var ℓ_all + Var ℓ_worst)

As in DomainBed, both weights are 0 for the first ``rdm_penalty_anneal_iters`` updates and
``rdm_lambda`` / ``variance_weight`` afterwards; at the switch Adam restarts (fresh moments)
at the learning rate ``rdm_lr``. The update count is a buffer, so a resumed run switches at
the same update; the new learning rate lives in the optimizer's saved state.

Hparams take DomainBed's per-dataset values (DomainNet, PACS and TerraIncognita differ), and
its image-dataset batch sizes (88, or 40 on DomainNet and TerraIncognita); the 28 px
datasets keep the common small-image batch size, the digit-subset family its calibrated one.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from domainbed.algorithms._support import pool, restart_optimizer
from domainbed.algorithms.base import Algorithm, LossOutput, Minibatches
from domainbed.algorithms.counters import UpdateCounter
from domainbed.algorithms.mmd import mmd_penalty
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.hparam import HParam, PerDataset, choice, int_uniform, uniform

# Bandwidths of RDM's kernel (one more than DomainBed's MMD: 1e-4).
RDM_GAMMAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def rdm_matching_penalty(worst: Tensor, pooled: Tensor, gammas: Sequence[float] = RDM_GAMMAS) -> Tensor:
    """Biased MMD² between two sets of scalar losses (any shape, flattened): the worst
    domain's per-sample losses and every domain's. fp32 (fp64 stays fp64)."""
    return mmd_penalty(worst.reshape(-1, 1), pooled.reshape(-1, 1), gammas)


def rdm_variance_penalty(worst: Tensor, pooled: Tensor) -> Tensor:
    """``Var(pooled) + Var(worst)``, unbiased variances of the per-sample losses."""
    return pooled.float().var() + worst.float().var()


def worst_domain_losses(per_sample: Tensor, sizes: Sequence[int]) -> tuple[Tensor, Tensor]:
    """The per-domain mean risks and the per-sample losses of the domain whose mean is
    highest (ties: the first), from pooled per-sample losses split by ``sizes``."""
    sizes = list(sizes)
    if len(set(sizes)) == 1:
        # Equal batches (the training loop's): pick on the device, without a host sync.
        table = per_sample.view(len(sizes), sizes[0])
        risks = table.mean(1)
        return risks, table[risks.detach().argmax()]
    parts = torch.split(per_sample, sizes)
    risks = torch.stack([p.mean() for p in parts])
    return risks, parts[int(risks.detach().argmax())]


@register_algorithm
class RDM(Algorithm):
    """Mean domain risk + annealed risk-distribution matching; see the module docstring."""

    EXPOSES_FEATURES = True
    HPARAMS = {
        "rdm_lambda": PerDataset(
            HParam(5.0, uniform(0.1, 10.0), "weight of the risk-distribution (MMD) matching term after annealing"),
            {"DomainNet": HParam(0.5, uniform(0.1, 1.0)),
             "PACS": HParam(5.0, uniform(1.0, 10.0)),
             "TerraIncognita": HParam(5.0, uniform(1.0, 10.0))},
        ),
        "rdm_penalty_anneal_iters": PerDataset(
            HParam(1500, int_uniform(800, 2700), "updates before the penalties switch on (and Adam restarts)"),
            {"DomainNet": HParam(2400, int_uniform(1500, 3000))},
        ),
        "variance_weight": PerDataset(
            HParam(0.004, uniform(0.001, 0.007), "weight of the loss-variance term after annealing"),
            {name: HParam(0.0, choice(0.0)) for name in ("TerraIncognita", "OfficeHome", "DomainNet")},
        ),
        "rdm_lr": HParam(1.5e-5, uniform(8e-6, 2e-5), "learning rate of the Adam restarted when the penalties switch on"),
        "batch_size": PerDataset(
            HParam(88, int_uniform(70, 100), "per-domain minibatch size"),
            {"small": None, "mnist_subset": None,
             "DomainNet": HParam(40, int_uniform(30, 60)), "TerraIncognita": HParam(40, int_uniform(30, 60))},
        ),
    }

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Mapping[str, Any]):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.update_count = UpdateCounter()

    def penalties_on(self) -> bool:
        return self.update_count.value >= int(self.hparams["rdm_penalty_anneal_iters"])

    def compute_loss(self, minibatches: Minibatches) -> LossOutput:
        x, y, sizes = pool(minibatches)
        feats = self.featurize(x)
        logits = self.classifier(feats.final)
        per_sample = F.cross_entropy(logits.float(), y, reduction="none")
        risks, worst = worst_domain_losses(per_sample, sizes)
        erm = risks.mean()
        match = rdm_matching_penalty(worst, per_sample)
        var = rdm_variance_penalty(worst, per_sample)
        on = self.penalties_on()
        w_match = float(self.hparams["rdm_lambda"]) if on else 0.0
        w_var = float(self.hparams["variance_weight"]) if on else 0.0
        loss = erm + w_match * match + w_var * var
        logs = {"loss_ce": erm.detach(), "penalty_rdm_match": match.detach(), "penalty_rdm_var": var.detach(),
                "rdm_weight": torch.tensor(w_match)}
        return loss, logs, {"x": x, "y": y, "features": feats, "logits": logits}

    def update(self, minibatches: Minibatches, unlabeled: list[Tensor] | None = None) -> dict[str, Tensor]:
        if self.optimizer is None:
            self.setup()
        if self.update_count.value == int(self.hparams["rdm_penalty_anneal_iters"]):
            # DomainBed's RDM: a new Adam at rdm_lr when the penalties switch on.
            restart_optimizer(self, lr=float(self.hparams["rdm_lr"]))
        out = super().update(minibatches, unlabeled)
        self.update_count.increment()
        return out
