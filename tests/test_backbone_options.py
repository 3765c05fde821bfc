"""DomainBed HEAD's backbone options: resnet50_augmix, vit + dinov2, vit_attn_tune, vit_dropout.

Each builds with random weights, trains a few steps on Debug224, and loads a local weights
file written here; a missing file is an error naming it. The DINOv2 feature recipe is checked
against a block-by-block computation on a small DINOv2 (ViT-S/14 at 28 px).
"""

from __future__ import annotations

import json

import pytest
import torch

from domainbed.lib.errors import UserError
from domainbed.networks import WeightsError, build_featurizer
from domainbed.networks.backbones import DINOV2, RESNET50_AUGMIX, resolve_backbone_name
from domainbed.networks.dinov2 import DinoV2Features
from domainbed.networks.weights import load_pretrained

DINO = {"backbone": "resnet50", "vit": True, "dinov2": True, "pretrained": False}
AUGMIX = {"backbone": "resnet50", "resnet50_augmix": True, "pretrained": False}


@pytest.fixture
def hub_dir(tmp_path):
    """torch hub's cache pointed at an empty folder, restored afterwards."""
    before = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    yield tmp_path / "hub" / "checkpoints"
    torch.hub.set_dir(before)


def _random_like(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {k: torch.randn(v.shape, generator=g).to(v.dtype) if v.is_floating_point() else v.clone()
            for k, v in module.state_dict().items()}


# ------------------------------------------------------------------ which backbone the switches choose
@pytest.mark.parametrize("hparams, expected", [
    ({"backbone": "resnet50"}, "resnet50"),
    ({"backbone": "resnet50", "resnet18": True}, "resnet18"),
    ({"backbone": "resnet50", "resnet50_augmix": True}, RESNET50_AUGMIX),
    ({"backbone": "resnet50", "resnet18": True, "resnet50_augmix": True}, RESNET50_AUGMIX),  # DomainBed's precedence
    ({"backbone": "resnet18", "vit": True, "dinov2": True, "resnet50_augmix": True}, DINOV2),
    ({"backbone": "mnist_cnn", "vit": True, "dinov2": True, "resnet50_augmix": True}, "mnist_cnn"),  # 28 px: ignored
])
def test_switches_choose_domainbeds_backbone(hparams, expected):
    assert resolve_backbone_name(hparams) == expected


@pytest.mark.parametrize("hparams, message", [
    ({"backbone": "resnet50", "vit": True}, "both hparams vit and dinov2"),
    ({"backbone": "resnet50", "dinov2": True}, "both hparams vit and dinov2"),
    ({"backbone": "efficientnet_lite0", "resnet50_augmix": True}, "set backbone to resnet50"),
])
def test_contradictory_switches_are_refused(hparams, message):
    with pytest.raises(UserError, match=message):
        resolve_backbone_name(hparams)


# ------------------------------------------------------------------ resnet50_augmix
def test_resnet50_augmix_is_timms_resnet50_with_batchnorm_training():
    f = build_featurizer((3, 224, 224), AUGMIX)
    assert f.trunk.pretrained_cfg["tag"] == "ram_in1k" and f.n_outputs == 2048
    assert f.freeze_bn is False  # DomainBed HEAD's freeze_bn default
    assert build_featurizer((3, 224, 224), {**AUGMIX, "freeze_bn": True}).freeze_bn is True
    assert build_featurizer((3, 224, 224), {"backbone": "resnet50", "pretrained": False}).freeze_bn is True
    assert build_featurizer((3, 224, 224), {**AUGMIX, "resnet_dropout": 0.5}).dropout.p == 0.5


def test_resnet50_augmix_loads_its_release_file_from_torch_hubs_cache(hub_dir):
    state = _random_like(build_featurizer((3, 224, 224), AUGMIX).trunk)
    torch.save(state, hub_dir / "resnet50_ram-a26f946b.pth")
    loaded = build_featurizer((3, 224, 224), {**AUGMIX, "pretrained": True}).trunk.state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)


def test_resnet50_augmix_without_its_file_names_it_and_where_to_put_it(hub_dir):
    with pytest.raises(WeightsError) as e:
        build_featurizer((3, 224, 224), {**AUGMIX, "pretrained": True})
    assert "resnet50_ram-a26f946b.pth" in str(e.value) and str(hub_dir) in str(e.value)
    assert "timm/resnet50.ram_in1k" in str(e.value)


# ------------------------------------------------------------------ DINOv2
def test_dinov2_features_are_four_class_tokens_and_the_mean_patch_token():
    torch.manual_seed(0)
    net = DinoV2Features(28, arch="vit_small_patch14_dinov2").eval()
    x = torch.randn(2, 3, 28, 28)
    vit = net.vit
    with torch.no_grad():
        h = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        outs = []
        for block in vit.blocks:
            h = block(h)
            outs.append(vit.norm(h))
        expected = torch.cat([o[:, 0] for o in outs[-4:]] + [outs[-1][:, 1:].mean(1)], dim=1)
        got = net(x)
    assert net.num_features == 5 * 384 and got.shape == (2, 5 * 384)
    torch.testing.assert_close(got, expected)


def test_dinov2_is_vit_b14_with_3840_features_and_vit_dropout():
    f = build_featurizer((3, 224, 224), {**DINO, "vit_dropout": 0.5, "resnet_dropout": 0.1})
    assert f.n_outputs == 5 * 768 and len(f.trunk.vit.blocks) == 12 and f.trunk.vit.patch_embed.patch_size == (14, 14)
    assert f.dropout.p == 0.5 and f.freeze_bn is False
    # vit_dropout is drawn on every dataset but acts on ViTs only.
    assert build_featurizer((3, 224, 224), {"backbone": "resnet18", "pretrained": False, "vit_dropout": 0.5}).dropout.p == 0
    with pytest.raises(UserError, match="multiple of 14"):
        build_featurizer((3, 64, 64), DINO)


def test_vit_attn_tune_trains_only_the_attention_layers():
    f = build_featurizer((3, 224, 224), {**DINO, "vit_attn_tune": True})
    trained = {n for n, p in f.named_parameters() if p.requires_grad}
    assert trained and all(".attn." in n for n in trained)
    assert {f"trunk.vit.blocks.11.attn.{m}.{t}" for m in ("qkv", "proj") for t in ("weight", "bias")} <= trained
    assert len(trained) == 12 * 4
    with pytest.raises(UserError, match="vit_attn_tune"):
        build_featurizer((3, 224, 224), {"backbone": "resnet18", "pretrained": False, "vit_attn_tune": True})


def test_dinov2_loads_metas_release_file_with_its_mask_token_and_518px_positions(hub_dir):
    # Meta's format on a small DINOv2 (fast): a mask token, position embeddings for 518 px.
    import timm

    release = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0)
    state = {**_random_like(release), "mask_token": torch.zeros(1, 384)}
    assert state["pos_embed"].shape == (1, 37 * 37 + 1, 384)
    torch.save(state, hub_dir / "dinov2_vits14_pretrain.pth")
    net = DinoV2Features(224, arch="vit_small_patch14_dinov2.lvd142m")
    assert load_pretrained(net.vit, "vit_small_patch14_dinov2.lvd142m").name == "dinov2_vits14_pretrain.pth"
    loaded = net.vit.state_dict()
    assert loaded["pos_embed"].shape == (1, 16 * 16 + 1, 384)  # resampled to 224 px
    assert torch.equal(loaded["blocks.3.attn.qkv.weight"], state["blocks.3.attn.qkv.weight"])
    assert torch.equal(loaded["pos_embed"][:, 0], state["pos_embed"][:, 0])  # the class token's is kept


@pytest.mark.slow
def test_dinov2_loads_a_weights_path_and_names_its_file_when_missing(hub_dir, tmp_path):
    with pytest.raises(WeightsError) as e:
        build_featurizer((3, 224, 224), {**DINO, "pretrained": True})
    assert "dinov2_vitb14_pretrain.pth" in str(e.value) and str(hub_dir) in str(e.value)
    state = _random_like(build_featurizer((3, 224, 224), DINO).trunk.vit)
    path = tmp_path / "dinov2.safetensors"
    from safetensors.torch import save_file

    save_file(state, str(path))
    loaded = build_featurizer((3, 224, 224), {**DINO, "pretrained": True, "weights_path": str(path)}).trunk.vit.state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)


# ------------------------------------------------------------------ training on Debug224
def _train(tmp_path, hparams: dict) -> list[dict]:
    from domainbed.scripts import train

    out = tmp_path / "run"
    train.main(["--dataset", "Debug224", "--algorithm", "ERM", "--steps", "3", "--checkpoint_freq", "3",
                "--hparams", json.dumps({"batch_size": 2, "eval_batch_size": 8, **hparams}),
                "--output_dir", str(out), "--skip_model_save"])
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_resnet50_augmix_trains_on_debug224(tmp_path):
    records = _train(tmp_path, {"resnet50_augmix": True, "resnet_dropout": 0.1})
    assert records and records[-1]["hparams"]["resnet50_augmix"] is True


@pytest.mark.slow
def test_dinov2_with_attention_tuning_and_dropout_trains_on_debug224(tmp_path):
    records = _train(tmp_path, {"vit": True, "dinov2": True, "vit_attn_tune": True, "vit_dropout": 0.1})
    assert records and all(k in records[-1]["hparams"] for k in ("vit", "dinov2", "vit_attn_tune"))
