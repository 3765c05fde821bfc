"""Random-tensor datasets for tests: fast, deterministic, no files."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from domainbed.datasets.base import MultipleDomainDataset, SmallImageDataset, TensorDomain, register_dataset


class _Debug(MultipleDomainDataset):
    ENVIRONMENTS = ["0", "1", "2"]
    N_STEPS = 5
    CHECKPOINT_FREQ = 2
    N_WORKERS = 0
    SIZE = 28
    N_PER_DOMAIN = 32

    def __init__(self, root: str | None, test_envs: Sequence[int], hparams: Mapping[str, Any]):
        self.input_shape = (3, self.SIZE, self.SIZE)
        self.num_classes = 2
        g = torch.Generator().manual_seed(0)
        self.datasets = [
            TensorDomain(
                torch.randn(self.N_PER_DOMAIN, *self.input_shape, generator=g),
                torch.randint(0, self.num_classes, (self.N_PER_DOMAIN,), generator=g),
            )
            for _ in self.ENVIRONMENTS
        ]


@register_dataset
class Debug28(SmallImageDataset, _Debug):
    HPARAM_FAMILY = "debug28"
    SIZE = 28


@register_dataset
class Debug224(_Debug):
    HPARAM_FAMILY = "image"
    # Random tensors need no ImageNet prior; the choice is explicit, never a silent fallback.
    HPARAM_DEFAULTS = {"backbone": "resnet18", "pretrained": False, "image_size": 224}
    SIZE = 224
    N_PER_DOMAIN = 8
