"""Mixup across domains (inter-domain mixup: Yan et al., arXiv 2001.00677; Wang et al.,
arXiv 1912.01805; mixup itself: Zhang et al., arXiv 1710.09412).

Each update orders the training domains by a random permutation and pairs every domain
with the next one (cyclically). Each pair draws ``λ ~ Beta(α, α)`` and trains on
``λ x_i + (1 - λ) x_j`` with the loss ``λ CE(·, y_i) + (1 - λ) CE(·, y_j)``; the loss is
the mean over pairs (DomainBed's form).
"""

from __future__ import annotations

import torch
from torch import Tensor

from domainbed.algorithms.base import Algorithm, LossOutput, Minibatches, cross_entropy
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.hparam import HParam, log_uniform


def cyclic_pairs(perm: list[int]) -> list[tuple[int, int]]:
    """``(perm[k], perm[k + 1 mod n])`` for every ``k``: each domain is mixed with the next
    one in the permutation (with one domain, with itself)."""
    n = len(perm)
    return [(perm[k], perm[(k + 1) % n]) for k in range(n)]


def mix(xi: Tensor, xj: Tensor, lam: float) -> Tensor:
    """``lam · xi + (1 - lam) · xj`` over the first ``min(len(xi), len(xj))`` samples."""
    n = min(len(xi), len(xj))
    return lam * xi[:n] + (1 - lam) * xj[:n]


def mixup_loss(logits: Tensor, yi: Tensor, yj: Tensor, lam: float) -> Tensor:
    """``lam · CE(logits, yi) + (1 - lam) · CE(logits, yj)`` (fp32)."""
    return lam * cross_entropy(logits, yi) + (1 - lam) * cross_entropy(logits, yj)


@register_algorithm
class Mixup(Algorithm):
    """Cross-entropy on inputs mixed between domains, with labels mixed in the loss.

    FT-LP composes with it: ``extras["x"]`` are the mixed inputs and ``extras["features"]``
    their features, so the prior is applied on the same mixed inputs the classifier sees.
    ``extras["y"]`` holds the label of each mixed sample's first partner (``y_i``).
    """

    EXPOSES_FEATURES = True
    HPARAMS = {"mixup_alpha": HParam(0.2, log_uniform(-1, 1), "α of the Beta(α, α) mixing weight")}

    def compute_loss(self, minibatches: Minibatches) -> LossOutput:
        pairs = cyclic_pairs(torch.randperm(len(minibatches)).tolist())
        alpha = torch.tensor(float(self.hparams["mixup_alpha"]))
        # Drawn on the CPU (no device sync to read them), from torch's saved RNG stream.
        lams = torch.distributions.Beta(alpha, alpha).sample((len(pairs),)).tolist()
        xs, yis, yjs, sizes = [], [], [], []
        for (i, j), lam in zip(pairs, lams):
            (xi, yi), (xj, yj) = minibatches[i], minibatches[j]
            xs.append(mix(xi, xj, lam))
            n = len(xs[-1])
            yis.append(yi[:n])
            yjs.append(yj[:n])
            sizes.append(n)
        x = torch.cat(xs)
        feats = self.featurize(x)  # one forward pass for every pair
        logits = self.classifier(feats.final)
        losses = [
            mixup_loss(l, yi, yj, lam) for l, yi, yj, lam in zip(torch.split(logits, sizes), yis, yjs, lams)
        ]
        loss = torch.stack(losses).mean()
        return loss, {"loss_mixup": loss.detach()}, {"x": x, "y": torch.cat(yis), "features": feats, "logits": logits}
