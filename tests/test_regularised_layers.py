"""Which tensors MIRO (and FT-LP's ``stages`` layers) regularise, per backbone family
(domainbed/networks/backbones.py). MIRO's released code taps a ResNet's stem at the
max-pool output (stride 4), then layer1..layer4. Random weights: nothing is downloaded."""

from __future__ import annotations

import pytest
import torch

from domainbed import hparams_registry
from domainbed.algorithms import get_algorithm_class
from domainbed.networks.backbones import intermediate_taps

SIZE = 64  # px; strides are read off the feature maps at this input size

RESNET = [("maxpool", 4), ("layer1", 4), ("layer2", 8), ("layer3", 16), ("layer4", 32)]
EXPECTED = {
    "resnet18": (RESNET, [64, 64, 128, 256, 512]),
    "resnet50": (RESNET, [64, 256, 512, 1024, 2048]),
    # The last block of each stage where the resolution drops (timm's feature_info).
    "efficientnet_lite0": ([("blocks.0", 2), ("blocks.1", 4), ("blocks.2", 8), ("blocks.4", 16), ("blocks.6", 32)],
                           [16, 24, 40, 112, 320]),
}


def _make(name: str, backbone: str, **overrides):
    torch.manual_seed(0)
    h = hparams_registry.default_hparams(name, "PACS")
    h.update({"backbone": backbone, "pretrained": False, "batch_size": 2, **overrides})
    return get_algorithm_class(name)((3, SIZE, SIZE), 3, 2, h).setup("cpu")


@pytest.mark.parametrize("backbone", sorted(EXPECTED))
def test_miro_regularises_the_named_tensors_at_their_strides(backbone: str) -> None:
    taps, channels = EXPECTED[backbone]
    alg = _make("MIRO", backbone)
    assert intermediate_taps(alg.featurizer) == taps
    names, got_channels = alg._layers()
    assert names == [f"stage{i}" for i in range(5)] and got_channels == channels
    alg.eval()
    with torch.no_grad():
        feats = alg.featurizer.forward_features(torch.randn(2, 3, SIZE, SIZE), intermediates=True)
    assert [SIZE // t.shape[-1] for t in feats.intermediates] == [stride for _, stride in taps]
    assert [t.shape[1] for t in feats.intermediates] == channels


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_resnet_stem_is_the_max_pool_output(backbone: str) -> None:
    """The stem tensor is the one layer1 receives: conv1, bn1, act1, then the max-pool."""
    alg = _make("MIRO", backbone)
    alg.eval()
    trunk = alg.featurizer.trunk
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        stem = alg.featurizer.forward_features(x, intermediates=True).intermediates[0]
        by_hand = trunk.maxpool(trunk.act1(trunk.bn1(trunk.conv1(x))))
    torch.testing.assert_close(stem, by_hand, rtol=0, atol=0)


def test_sampled_posterior_noise_is_injected_at_the_same_tensors() -> None:
    """FT-LP's noise hooks sit on the modules the taps name: a ResNet's maxpool included
    (the start-up layout check compares the hooked outputs with the intermediates)."""
    alg = _make("ERM_FTLP", "resnet18", ftlp_layers="stages", ftlp_posterior="sample")
    trunk = alg.featurizer.trunk
    assert trunk.maxpool._forward_hooks and not trunk.act1._forward_hooks
