"""Backbones, featurizer + classifier, and offline pretrained weights."""

from domainbed.networks.backbones import Features, Featurizer, build_classifier, build_featurizer
from domainbed.networks.weights import WeightsError, load_pretrained

__all__ = ["Features", "Featurizer", "build_classifier", "build_featurizer", "WeightsError", "load_pretrained"]
