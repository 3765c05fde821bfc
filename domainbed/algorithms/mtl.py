"""MTL: marginal transfer learning (Blanchard et al., arXiv 1711.07910), as a neural network.

The classifier sees each sample's features next to an embedding of its domain's marginal
distribution: the mean feature of the domain's batch. During training the embedding of
domain ``d`` is ``mtl_ema · mean(batch features) + (1 - mtl_ema) · stored[d]`` and is stored
(a buffer, so a resumed run keeps it); at test time it is the mean feature of the batch
being predicted. The loss is the sum over domains of their mean cross-entropy (DomainBed).

DomainBed's implementation overwrites the embedding with standard normal noise before
the classifier reads it (an in-place ``normal_()``); we follow the paper and feed the
embedding itself.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from domainbed.algorithms.base import Algorithm, LossOutput, Minibatches, Predictor, cross_entropy
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.hparam import HParam, choice
from domainbed.networks import build_classifier


def marginal_embedding(features: Tensor, stored: Tensor | None = None, ema: float = 1.0) -> Tensor:
    """``ema · mean(features) + (1 - ema) · stored`` (just the mean when ``stored`` is None),
    in fp32. ``features``: ``(n, d)``; returns ``(d,)``."""
    mean = features.float().mean(0)
    if stored is None:
        return mean
    return ema * mean + (1 - ema) * stored.float()


def with_embedding(features: Tensor, embedding: Tensor) -> Tensor:
    """Each row of ``features`` followed by ``embedding``: ``(n, 2d)``."""
    return torch.cat([features, embedding.to(features.dtype).expand(len(features), -1)], dim=1)


@register_algorithm
class MTL(Algorithm):
    """Classifier on ``[features, domain embedding]``; see the module docstring."""

    HPARAMS = {"mtl_ema": HParam(0.99, choice(0.5, 0.9, 0.99, 1.0), "weight of the current batch in each domain's embedding")}

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Mapping[str, Any]):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        d = self.featurizer.n_outputs
        self.classifier = build_classifier(2 * d, num_classes, bool(self.hparams.get("nonlinear_classifier", False)))
        self.register_buffer("embeddings", torch.zeros(num_domains, d))

    def compute_loss(self, minibatches: Minibatches) -> LossOutput:
        if len(minibatches) != self.num_domains:
            raise ValueError(f"MTL was built for {self.num_domains} training domains but got {len(minibatches)} minibatches")
        sizes = [len(x) for x, _ in minibatches]
        f = self.featurize(torch.cat([x for x, _ in minibatches])).final
        ema = float(self.hparams["mtl_ema"])
        loss = f.new_zeros((), dtype=torch.float32)
        for d, (fd, (_, y)) in enumerate(zip(torch.split(f, sizes), minibatches)):
            emb = marginal_embedding(fd, self.embeddings[d], ema)
            with torch.no_grad():
                self.embeddings[d].copy_(emb)
            loss = loss + cross_entropy(self.classifier(with_embedding(fd, emb)), y)
        return loss, {"loss_ce": loss.detach()}, {}

    def predict(self, x: Tensor) -> Tensor:
        f = self.featurize(x).final
        return self.classifier(with_embedding(f, marginal_embedding(f)))

    def build_predictor(self) -> Predictor:
        raise NotImplementedError("MTL predicts from a batch embedding; use MTL.predict, not a stand-alone featurizer + classifier")
