"""Backbones, featurizer + classifier, and offline pretrained weights.

``Featurizer(input_shape, hparams)`` and ``Classifier(in_features, out_features,
is_nonlinear)`` are DomainBed's constructors, for scripts written against DomainBed; our
own code builds with :func:`build_featurizer` and :func:`build_classifier`, and the
featurizer's class is :class:`domainbed.networks.backbones.Featurizer`.

Who uses it: the algorithms (featurizer and classifier), FT-LP's prior, and inference (rebuilding an exported model).
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from domainbed.networks import backbones
from domainbed.networks.backbones import Features, build_classifier, build_featurizer
from domainbed.networks.weights import WeightsError, load_pretrained

__all__ = ["Classifier", "Features", "Featurizer", "build_classifier", "build_featurizer", "WeightsError",
           "load_pretrained"]


def Featurizer(input_shape: tuple[int, ...], hparams: Mapping[str, Any]) -> backbones.Featurizer:  # noqa: N802
    """DomainBed's featurizer for ``input_shape``: the hparam ``backbone`` when given, else,
    as DomainBed chooses by shape, the MNIST CNN for 28x28 inputs and a ResNet (ResNet-18
    with hparam ``resnet18``, else ResNet-50) otherwise. The result has ``n_outputs``."""
    chosen = dict(hparams)
    if "backbone" not in chosen and tuple(input_shape[1:3]) == (28, 28):
        chosen["backbone"] = "mnist_cnn"
    return build_featurizer(tuple(input_shape), chosen)


def Classifier(in_features: int, out_features: int, is_nonlinear: bool = False) -> nn.Module:  # noqa: N802
    """DomainBed's classifier head: linear, or its MLP when ``is_nonlinear``."""
    return build_classifier(in_features, out_features, is_nonlinear)
