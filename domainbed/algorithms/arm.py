"""ARM: adaptive risk minimisation (Zhang et al., arXiv 2007.02931), the context-network
variant ARM-CML that DomainBed runs.

A small convolutional context network maps every image to a one-channel map; the mean map
over a group of images from one domain (its "context") is appended to each image of the
group as an extra input channel, so the model adapts to the domain at test time from the
unlabelled batch. In training a group is one domain's minibatch. In :meth:`ARM.predict` a
batch is split into consecutive groups of ``batch_size`` images when its size is a
multiple of ``batch_size``, and is one group otherwise (DomainBed's rule).

The featurizer takes ``C + 1`` channels. A pretrained backbone keeps its weights: its first
convolution is widened, the new channel copying the weights of channel ``C mod C_orig``
(channel 0 for RGB), as DomainBed widens its ResNets; a backbone trained from scratch is
built with ``C + 1`` channels.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from domainbed.algorithms._support import pool
from domainbed.algorithms.base import Algorithm, LossOutput, Minibatches, Predictor, cross_entropy
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.hparam import HParam, PerFamily, pow2_int
from domainbed.networks import build_featurizer


class ContextNet(nn.Module):
    """Three 5x5 convolutions (64, 64, 1 channels; BatchNorm and ReLU between) that keep the
    spatial size: one context map per image."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 64, 5, padding=2), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 5, padding=2), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 1, 5, padding=2),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def widen_input_conv(module: nn.Module, in_channels: int) -> nn.Conv2d:
    """Replace the first ``Conv2d`` of ``module`` by one taking ``in_channels`` channels, input
    channel ``k`` copying the weights of old channel ``k mod old_channels``; returns it."""
    name, conv = next(((n, m) for n, m in module.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if conv is None:
        raise ValueError(f"{type(module).__name__} has no Conv2d layer to widen for ARM's context channel")
    if conv.groups != 1:
        raise ValueError(f"cannot widen grouped convolution {name} (groups={conv.groups}) for ARM's context channel")
    old = conv.in_channels
    wide = copy.deepcopy(conv)  # keeps the subclass (e.g. timm's same-padding conv) and its settings
    wide.in_channels = in_channels
    wide.weight = nn.Parameter(conv.weight.detach()[:, [k % old for k in range(in_channels)]].clone())
    parent = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
    setattr(parent, name.rpartition(".")[2], wide)
    return wide


def group_context(context: Tensor, group: int) -> Tensor:
    """Mean of ``context`` ``(n, 1, H, W)`` over consecutive groups of ``group`` maps, repeated
    back to ``n`` maps."""
    n = context.shape[0]
    if n % group != 0:
        raise ValueError(f"batch of {n} cannot be split into groups of {group}")
    means = context.reshape(n // group, group, *context.shape[1:]).mean(1)
    return means.repeat_interleave(group, dim=0)


@register_algorithm
class ARM(Algorithm):
    """ERM on images extended with their group's context channel; see the module docstring."""

    HPARAMS = {
        # DomainBed: ARM's batch (the context's support) is 8 on image datasets, and the
        # usual batch size on 28-px digits.
        "batch_size": PerFamily(small=HParam(64, pow2_int(3, 9)), image=HParam(8)),
    }

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Mapping[str, Any]):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        channels = self.input_shape[0]
        if self.hparams.get("pretrained", False):
            widen_input_conv(self.featurizer.trunk, channels + 1)
        else:
            self.featurizer = build_featurizer((channels + 1, *self.input_shape[1:]), self.hparams)
        self.context_net = ContextNet(channels)
        self.support_size = int(self.hparams["batch_size"])

    def _with_context(self, x: Tensor, context: Tensor) -> Tensor:
        return torch.cat([x, context.to(x.dtype)], dim=1)

    def compute_loss(self, minibatches: Minibatches) -> LossOutput:
        x, y, sizes = pool(minibatches)
        context = self.context_net(x)
        # One context per domain's minibatch.
        context = torch.cat([c.mean(0, keepdim=True).expand_as(c) for c in torch.split(context, sizes)])
        logits = self.classifier(self.featurize(self._with_context(x, context)).final)
        loss = cross_entropy(logits, y)
        return loss, {"loss_ce": loss.detach()}, {}

    def predict(self, x: Tensor) -> Tensor:
        group = self.support_size if len(x) % self.support_size == 0 else len(x)
        context = group_context(self.context_net(x), group)
        return self.classifier(self.featurize(self._with_context(x, context)).final)

    def build_predictor(self) -> Predictor:
        raise NotImplementedError("ARM predicts with its context network; use ARM.predict, not a stand-alone featurizer + classifier")
