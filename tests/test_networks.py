from __future__ import annotations

import pytest
import torch

from domainbed.networks import WeightsError, build_featurizer
from domainbed.networks.weights import bundled_efficientnet_lite0, read_state_dict


def test_bundled_efficientnet_lite0_loads_tensor_for_tensor():
    path = bundled_efficientnet_lite0()
    assert path is not None
    source = [v for k, v in read_state_dict(path).items() if not k.startswith("_fc.")]
    f = build_featurizer((3, 32, 32), {"backbone": "efficientnet_lite0", "pretrained": True})
    target = list(f.trunk.state_dict().values())
    assert len(source) == len(target) == 294
    for s, t in zip(source, target):
        assert torch.equal(s, t)


def test_intermediate_features_in_one_pass():
    f = build_featurizer((3, 32, 32), {"backbone": "efficientnet_lite0", "pretrained": True}).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = f.forward_features(x, intermediates=True)
    assert feats.final.shape == (2, 1280)
    assert [t.shape[1] for t in feats.intermediates] == [16, 24, 40, 112, 320]
    torch.testing.assert_close(feats.final, f(x))


def test_missing_resnet_weights_name_the_file(empty_torch_hub):
    with pytest.raises(WeightsError, match=r"resnet50-0676ba61\.pth.*download\.pytorch\.org.*pretrained to false"):
        build_featurizer((3, 64, 64), {"backbone": "resnet50", "pretrained": True})


def test_explicit_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        build_featurizer((3, 32, 32), {"backbone": "resnet18", "pretrained": True, "weights_path": str(tmp_path / "x.pth")})


def test_wrong_architecture_names_tensors(tmp_path):
    small = build_featurizer((3, 32, 32), {"backbone": "resnet18", "pretrained": False})
    path = tmp_path / "r18.pth"
    torch.save(small.trunk.state_dict(), path)
    with pytest.raises(WeightsError, match=r"mismatch|do not fit"):
        build_featurizer((3, 32, 32), {"backbone": "resnet50", "pretrained": True, "weights_path": str(path)})


def test_resnet_weights_from_explicit_file_and_frozen_bn(tmp_path):
    ref = build_featurizer((3, 32, 32), {"backbone": "resnet18", "pretrained": False})
    path = tmp_path / "resnet18-f37072fd.pth"
    sd = dict(ref.trunk.state_dict())
    sd["fc.weight"] = torch.zeros(1000, 512)  # torchvision files carry a head; it is ignored
    sd["fc.bias"] = torch.zeros(1000)
    torch.save(sd, path)
    f = build_featurizer((3, 32, 32), {"backbone": "resnet18", "pretrained": True, "weights_path": str(path)})
    assert torch.equal(f.trunk.conv1.weight, ref.trunk.conv1.weight)
    f.train()
    assert f.freeze_bn and not f.trunk.bn1.training and f.trunk.conv1.training


def test_pickle_payload_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    import pickle

    path.write_bytes(pickle.dumps({"w": torch.nn.Linear(2, 2)}))
    with pytest.raises(WeightsError, match="cannot load .* safely"):
        read_state_dict(path)


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "resnet18"])
def test_any_timm_model_by_name_with_intermediates(name):
    f = build_featurizer((3, 32, 32), {"backbone": name, "pretrained": False}).eval()
    feats = f.forward_features(torch.randn(2, 3, 32, 32), intermediates=True)
    assert feats.final.shape == (2, f.n_outputs) and len(feats.intermediates) >= 4


def test_unknown_backbone_lists_choices():
    with pytest.raises(ValueError, match="unknown backbone 'nope'.*timm.list_models"):
        build_featurizer((3, 32, 32), {"backbone": "nope", "pretrained": False})
