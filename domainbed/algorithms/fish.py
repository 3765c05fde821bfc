"""Fish: gradient matching by a first-order meta step (Shi et al., arXiv 2104.09937).

Each update copies the network into an inner model, takes one optimizer step on every
training domain in turn (sequential SGD steps across domains), then moves the network a
fraction ``meta_lr`` of the way to the inner model's weights. To first order the meta
step follows the mean gradient plus a term that raises the inner product between
domains' gradients.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from domainbed.algorithms.base import Algorithm, Minibatches, cross_entropy
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.hparam import HParam, choice


def fish_meta_step(meta: list[torch.Tensor], inner: list[torch.Tensor], meta_lr: float) -> None:
    """In place: ``meta += meta_lr * (inner - meta)`` for each pair of tensors."""
    if len(meta) != len(inner):
        raise ValueError(f"fish_meta_step needs as many inner as meta tensors; got {len(inner)} and {len(meta)}")
    with torch.no_grad():
        if meta:
            torch._foreach_lerp_(meta, inner, meta_lr)


@register_algorithm
class Fish(Algorithm):
    """Inner steps one domain after another on a copy; the network moves toward the copy.

    The optimizer trains the inner copy; its Adam moments carry over from one update to
    the next (as in DomainBed), so they are what the training loop checkpoints. The inner
    copy is a registered module: ``state_dict()`` holds it.
    """

    HPARAMS = {"meta_lr": HParam(0.5, choice(0.05, 0.1, 0.5), "fraction of the way the meta step moves toward the inner weights")}

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Any):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.inner = nn.ModuleDict({"featurizer": copy.deepcopy(self.featurizer), "classifier": copy.deepcopy(self.classifier)})

    def setup(self, device=None):
        super().setup(device)
        if self.hparams.get("compile", False):
            self.inner["featurizer"].trunk.compile()
        return self

    def param_groups(self) -> list[dict[str, Any]]:
        inner_f, inner_c = self.inner["featurizer"], self.inner["classifier"]
        return [{"params": [p for p in inner_f.parameters() if p.requires_grad] + list(inner_c.parameters())}]

    def _pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """(meta floats, inner floats, meta others, inner others): parameters and buffers."""
        meta = list(self.featurizer.state_dict(keep_vars=True).values()) + list(self.classifier.state_dict(keep_vars=True).values())
        inner = list(self.inner["featurizer"].state_dict(keep_vars=True).values()) + list(
            self.inner["classifier"].state_dict(keep_vars=True).values())
        floats = [i for i, t in enumerate(meta) if t.is_floating_point()]
        others = [i for i, t in enumerate(meta) if not t.is_floating_point()]
        return ([meta[i] for i in floats], [inner[i] for i in floats], [meta[i] for i in others], [inner[i] for i in others])

    def update(self, minibatches: Minibatches, unlabeled: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        minibatches = self.begin_update(minibatches)
        assert self.optimizer is not None and self.scaler is not None
        meta_f, inner_f, meta_o, inner_o = self._pairs()
        with torch.no_grad():  # the inner model starts from the current weights
            torch._foreach_copy_(inner_f, meta_f)
            if meta_o:
                torch._foreach_copy_(inner_o, meta_o)
        losses = []
        for x, y in minibatches:
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                loss = cross_entropy(self.inner["classifier"](self.inner["featurizer"](x)), y)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            losses.append(loss.detach())
        fish_meta_step(meta_f, inner_f, float(self.hparams["meta_lr"]))
        with torch.no_grad():  # integer buffers (BatchNorm's step counter) follow the inner model
            if meta_o:
                torch._foreach_copy_(meta_o, inner_o)
        return {"loss": torch.stack(losses).float().mean()}
