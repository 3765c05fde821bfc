"""Hyper-parameters with DomainBed's semantics (docs/design.md).

* ``hparams_seed == 0`` gives the defaults.
* Otherwise every hparam is drawn from its own ``RandomState`` seeded with
  ``seed_hash(seed_hash(hparams_seed, trial_seed), name)``, so adding a hparam never
  shifts the draws of the others.

Hparams common to every algorithm are declared here; each algorithm declares its own in
an ``HPARAMS`` class attribute next to its code, and subclasses inherit their bases'.
Dataset-specific distributions (DomainNet's batch size) come from :data:`DATASET_SPECS`,
dataset-specific defaults from one table, :data:`DATASET_DEFAULTS`. Defaults and draws
equal DomainBed's except for our own hparams (tests/test_hparams_domainbed.py lists them).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np

from domainbed.lib.errors import UserError
from domainbed.lib.hparam import HParam, PerFamily, Sampler, choice, log_uniform, pow2_int, uniform
from domainbed.lib.misc import seed_hash

__all__ = ["HParam", "PerFamily", "Sampler", "choice", "log_uniform", "pow2_int", "uniform",
           "default_hparams", "get_hparams", "hparam_specs", "random_hparams", "parse_overrides"]

def _family_hparams(family: str) -> dict[str, HParam]:
    """Hparams every algorithm has; their values depend on the dataset family."""
    small = family in ("mnist", "debug28")
    subset = family == "mnist_subset"
    h: dict[str, HParam] = {
        "data_augmentation": HParam(True, help="DomainBed's training augmentation for image datasets"),
        "resnet18": HParam(False, help="DomainBed compatibility: use ResNet-18 where the backbone is resnet50"),
        # Declared for every dataset (so random draws match DomainBed's), applied to ResNets only.
        "resnet_dropout": HParam(0.0, choice(0.0, 0.1, 0.5), "dropout on the pooled features of ResNet backbones"),
        "class_balanced": HParam(False, help="sample classes uniformly in each training domain"),
        "nonlinear_classifier": HParam(False, help="an MLP head instead of a linear classifier"),
        "backbone": HParam(
            "mnist_cnn" if small else ("efficientnet_lite0" if subset else "resnet50"),
            help="featurizer: mnist_cnn, resnet18, resnet50, efficientnet_lite0, vit_b_16 or any timm name",
        ),
        "pretrained": HParam(not small, help="load ImageNet weights (offline; README.md: Pretrained weights, offline)"),
        "weights_path": HParam("", help="explicit pretrained-weights file; empty: look in the caches"),
        "freeze_bn": HParam("auto", help="keep BatchNorm statistics frozen; auto: True for ResNets"),
        "image_size": HParam(32 if subset else 224, help="input resolution of image datasets"),
        "precision": HParam("auto", help="autocast dtype: auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, fp32"),
        "channels_last": HParam("auto", help="channels_last memory format: auto (on for conv backbones other than mnist_cnn), true, false"),
        "fused_optimizer": HParam("auto", help="fused Adam where the device supports it"),
        "compile": HParam(False, help="torch.compile the featurizer"),
        "eval_batch_size": HParam(256, help="batch size of evaluation (under inference_mode)"),
        "input_pipeline": HParam("auto", help="training input pipeline: auto (device on CUDA for JPEG image folders), cpu, device"),
    }
    if small:
        h["lr"] = HParam(1e-3, log_uniform(-4.5, -2.5))
        h["batch_size"] = HParam(64, pow2_int(3, 9))
        h["weight_decay"] = HParam(0.0)
    elif subset:
        # Calibrated on 2 CPU cores (README.md, "The MNIST subsets are not MNIST"): lr 1e-4 underfits EfficientNet-Lite0 here.
        h["lr"] = HParam(1e-3, log_uniform(-3.5, -2.5))
        h["batch_size"] = HParam(16, pow2_int(3, 5))
        h["weight_decay"] = HParam(0.0, log_uniform(-6, -2))
    else:
        h["lr"] = HParam(5e-5, log_uniform(-5, -3.5))
        h["batch_size"] = HParam(32, pow2_int(3, 5.5))
        h["weight_decay"] = HParam(0.0, log_uniform(-6, -2))
    return h


# Dataset-specific distributions (default and random draw), applied before the algorithm's
# own hparams, so an algorithm that fixes one (ARM's batch_size) still wins, as in DomainBed.
DATASET_SPECS: dict[str, dict[str, HParam]] = {
    "DomainNet": {"batch_size": HParam(32, pow2_int(3, 5), "per-domain minibatch size")},
}

# Families whose lr and weight_decay we calibrated ourselves: hparams that
# DomainBed draws exactly like lr / weight_decay (DANN's generator and discriminator rates)
# follow the family's lr / weight_decay there instead of DomainBed's image values.
FOLLOW_FAMILY_LR: dict[str, str] = {"lr_g": "lr", "lr_d": "lr", "weight_decay_g": "weight_decay"}
CALIBRATED_FAMILIES = frozenset({"mnist_subset"})

# The one table of dataset-specific defaults. Values apply only to hparams the algorithm has.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    # MIRO's published lambda per dataset (ResNet-50) and SWAD's VLCS tolerance.
    "PACS": {"ftlp_lambda": 0.01},
    "VLCS": {"ftlp_lambda": 0.01, "swad_tolerance_ratio": 0.2},
    "OfficeHome": {"ftlp_lambda": 0.1},
    "TerraIncognita": {"ftlp_lambda": 0.1},
    "DomainNet": {"ftlp_lambda": 0.1},
    # Random tensors need no ImageNet prior; the choice is explicit, never a silent fallback.
    "Debug224": {"backbone": "resnet18", "pretrained": False, "image_size": 224},
}


def _dataset_family(dataset: str) -> str:
    from domainbed.datasets import get_dataset_class, is_folder_dataset

    if is_folder_dataset(dataset):
        return "image"
    return get_dataset_class(dataset).HPARAM_FAMILY


def hparam_specs(algorithm: str, dataset: str) -> dict[str, HParam]:
    """Every hparam of ``algorithm`` on ``dataset``, with dataset defaults applied."""
    from domainbed.algorithms import get_algorithm_class

    family = _dataset_family(dataset)
    specs = _family_hparams(family)
    specs.update(DATASET_SPECS.get(dataset, {}))
    for name, spec in get_algorithm_class(algorithm).hparam_specs().items():
        specs[name] = spec.resolve(family) if isinstance(spec, PerFamily) else spec
    if family in CALIBRATED_FAMILIES:
        for name, like in FOLLOW_FAMILY_LR.items():
            if name in specs:
                specs[name] = HParam(specs[like].default, specs[like].sample, specs[name].help)
    for name, value in DATASET_DEFAULTS.get(dataset, {}).items():
        if name in specs:
            specs[name] = HParam(value, specs[name].sample, specs[name].help)
    return specs


def default_hparams(algorithm: str, dataset: str) -> dict[str, Any]:
    return {name: spec.default for name, spec in hparam_specs(algorithm, dataset).items()}


def random_hparams(algorithm: str, dataset: str, seed: int) -> dict[str, Any]:
    """DomainBed-style random draw; ``seed`` is ``seed_hash(hparams_seed, trial_seed)``."""
    return {
        name: spec.draw(np.random.RandomState(seed_hash(seed, name)))
        for name, spec in hparam_specs(algorithm, dataset).items()
    }


def parse_overrides(text: str | None) -> dict[str, Any]:
    """Parse ``--hparams`` JSON; the error says what is wrong with it."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"--hparams is not valid JSON ({e.msg} at character {e.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise UserError(f"--hparams must be a JSON object such as '{{\"lr\": 1e-4}}', got {text!r}")
    return value


def get_hparams(
    algorithm: str,
    dataset: str,
    hparams_seed: int = 0,
    trial_seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The hparams of one run: defaults or a random draw, then validated user overrides."""
    if hparams_seed == 0:
        hparams = default_hparams(algorithm, dataset)
    else:
        hparams = random_hparams(algorithm, dataset, seed_hash(hparams_seed, trial_seed))
    unknown = sorted(set(overrides or {}) - set(hparams))
    if unknown:
        raise UserError(
            f"unknown hparam(s) {', '.join(unknown)} for {algorithm} on {dataset}. "
            f"Valid keys: {', '.join(sorted(hparams))}"
        )
    hparams.update(overrides or {})
    return hparams
