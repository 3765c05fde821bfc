"""Backbones by name, the featurizer and the classifier head.

One factory serves every backbone: DomainBed's small MNIST CNN, and timm models
(ResNet-18/50 take torchvision's ImageNet weights, which timm's ResNets accept key for key;
EfficientNet-Lite0, ViT-B/16, or any other timm name). Intermediate features come from
timm's ``forward_intermediates`` in the same forward pass as the pooled features.

Which tensor each intermediate is (FT-LP's ``stages`` layers and MIRO's regularised
features; :func:`intermediate_taps` lists them with their strides):

- ResNet-18/50: the stem at the max-pool output (stride 4), as MIRO's released code taps
  it, then the outputs of layer1..layer4 (strides 4, 8, 16, 32). timm's own first
  intermediate is the stem before the max-pool (stride 2); the featurizer pools it.
- EfficientNet (Lite0 included): the blocks timm's ``feature_info`` names, i.e. the last
  block of each stage where the resolution drops: blocks.0, 1, 2, 4, 6 (strides 2, 4, 8,
  16, 32). The stem convolution alone is not tapped.
- mnist_cnn: the output of each of its four blocks (strides 1, 2, 2, 2).
- Other timm models: whatever their ``feature_info`` names.
- dinov2_vitb14 (DomainBed HEAD's DINOv2): none; see :mod:`domainbed.networks.dinov2`.

DomainBed HEAD's backbone switches act where DomainBed builds its ResNet, that is on the
resnet18 / resnet50 backbones (:func:`resolve_backbone_name`): ``resnet50_augmix`` gives
timm's ResNet-50 with the ``resnet50.ram_in1k`` weights (AugMix + RandAugment training),
``vit`` and ``dinov2`` together give DINOv2 ViT-B/14. On mnist_cnn they are ignored, as
DomainBed ignores them on 28 px images; with any other backbone they are an error.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, NamedTuple

import torch
from torch import nn

from domainbed.lib.errors import UserError
from domainbed.networks.dinov2 import DINOV2_ARCH, DinoV2Features
from domainbed.networks.mnist_cnn import MNISTConvNet
from domainbed.networks.weights import WeightsError, input_normalisation, load_pretrained

log = logging.getLogger(__name__)

# What every dataset delivers (domainbed.datasets.transforms normalises with the same values).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Friendly names to timm model names.
TIMM_ALIASES = {"vit_b_16": "vit_base_patch16_224", "vit_b16": "vit_base_patch16_224"}
# DomainBed HEAD's backbones: hparam resnet50_augmix, and hparams vit + dinov2 (the name is
# torch hub's for the same network).
RESNET50_AUGMIX = "resnet50.ram_in1k"
DINOV2 = "dinov2_vitb14"


class Features(NamedTuple):
    """What a featurizer returns to an algorithm.

    ``final``: pooled features (the classifier's input). ``intermediates``: feature maps at
    the end of the stem and of each stage, empty unless requested. ``mean``: the posterior
    mean when an FT-LP encoder sits on top (None otherwise).
    """

    final: torch.Tensor
    intermediates: tuple[torch.Tensor, ...] = ()
    mean: torch.Tensor | None = None


def _is_resnet(name: str) -> bool:
    return name.startswith("resnet")


def _is_vit(name: str) -> bool:
    return name == DINOV2 or TIMM_ALIASES.get(name, name).startswith("vit")


def _taps_stem_before_maxpool(trunk: nn.Module) -> bool:
    """A timm ResNet, whose first intermediate is the stem before its max-pool."""
    info = getattr(trunk, "feature_info", None)
    return isinstance(getattr(trunk, "maxpool", None), nn.MaxPool2d) and bool(info) and info[0]["module"] in ("act1", "maxpool")


def create_trunk(name: str, input_shape: tuple[int, ...], pretrained: bool, weights_path: str | None) -> nn.Module:
    """Build the trunk of backbone ``name``, loading weights offline when ``pretrained``."""
    if name == "mnist_cnn":
        if pretrained:
            raise WeightsError("backbone mnist_cnn has no pretrained weights; set hparam pretrained to false")
        return MNISTConvNet(input_shape[0])
    if name == DINOV2:
        if input_shape[0] != 3:
            raise UserError(f"DINOv2 needs 3-channel images; this dataset has {input_shape[0]}")
        trunk = DinoV2Features(input_shape[-1])
        if pretrained:
            path = load_pretrained(trunk.vit, DINOV2_ARCH, weights_path)
            log.info("loaded pretrained weights for %s from %s", name, path)
            trunk.expected_input = input_normalisation(path)
        return trunk
    import timm

    timm_name = TIMM_ALIASES.get(name, name)
    if not timm.is_model(timm_name):
        raise UserError(
            f"unknown backbone {name!r}. Use mnist_cnn, resnet18, resnet50, efficientnet_lite0, "
            f"vit_b_16, {DINOV2}, or any name from timm.list_models()."
        )
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0}
    if input_shape[0] != 3:
        kwargs["in_chans"] = input_shape[0]
        if pretrained:
            raise WeightsError(f"ImageNet weights of {name} expect 3 input channels; this dataset has {input_shape[0]}")
    if timm_name.startswith("vit"):
        kwargs["img_size"] = input_shape[-1]
    trunk = timm.create_model(timm_name, **kwargs)
    if pretrained:
        path = load_pretrained(trunk, name if name in ("resnet18", "resnet50") else timm_name, weights_path)
        log.info("loaded pretrained weights for %s from %s", name, path)
        # Read by the Featurizer: the input scaling these weights were trained with.
        trunk.expected_input = input_normalisation(path)
    return trunk


class InputRescale(nn.Module):
    """Maps ImageNet-normalised inputs (what datasets deliver) to the scaling a weight file
    expects: ``x' = ((x σ_in + μ_in) − μ_w) / σ_w``, a fixed per-channel affine map."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        m_in, s_in = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        m_w, s_w = torch.tensor(mean), torch.tensor(std)
        # Not persistent: derived from the weight file, so checkpoints stay as they were.
        self.register_buffer("scale", (s_in / s_w).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", ((m_in - m_w) / s_w).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class Featurizer(nn.Module):
    """Trunk + optional dropout on the pooled features; BatchNorm can be frozen.

    ``forward(x)`` returns the pooled features; ``forward_features(x, intermediates=True)``
    also returns the stem/stage feature maps of the same pass.
    """

    def __init__(self, trunk: nn.Module, dropout: float = 0.0, freeze_bn: bool = False):
        super().__init__()
        self.trunk = trunk
        expected = getattr(trunk, "expected_input", None)
        self.input_rescale = InputRescale(*expected) if expected is not None else None
        self.n_outputs = int(trunk.num_features)
        self.dropout = nn.Dropout(dropout)
        self.freeze_bn = freeze_bn
        # MIRO regularises a ResNet's stem at the max-pool output: pool timm's stem
        # intermediate, and name maxpool in feature_info (the modules whose outputs the
        # intermediates are; FT-LP's noise hooks attach there).
        self._pool_stem = _taps_stem_before_maxpool(trunk)
        if self._pool_stem:
            trunk.feature_info[0] = {**trunk.feature_info[0], "module": "maxpool", "reduction": 4}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.trunk(self._rescale(x)))

    def _rescale(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_rescale is None else self.input_rescale(x)

    def forward_features(self, x: torch.Tensor, intermediates: bool = False) -> Features:
        if not intermediates:
            return Features(self(x))
        last, inter = self.trunk.forward_intermediates(self._rescale(x))
        if self._pool_stem:
            # The tensor layer1 received: .forward() leaves maxpool's hooks alone (they
            # already ran inside forward_intermediates).
            inter = [self.trunk.maxpool.forward(inter[0]), *inter[1:]]
        pooled = self.trunk.forward_head(last, pre_logits=True)
        return Features(self.dropout(pooled), tuple(inter))

    def train(self, mode: bool = True) -> "Featurizer":
        super().train(mode)
        if mode and self.freeze_bn:
            # DomainBed keeps ImageNet BatchNorm statistics: small per-domain batches
            # would otherwise overwrite them with noisy estimates.
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


def intermediate_taps(featurizer: Featurizer) -> list[tuple[str, int]]:
    """The trunk module whose output each intermediate is, with its stride (input size over
    feature-map size), in the order ``forward_features(x, intermediates=True)`` returns them."""
    info = getattr(featurizer.trunk, "feature_info", None) or []
    return [(str(i["module"]), int(i.get("reduction", 0))) for i in info]


def resolve_backbone_name(hparams: Mapping[str, Any]) -> str:
    """The backbone the hparams ask for, DomainBed's switches (resnet18, resnet50_augmix,
    vit + dinov2) applied where DomainBed applies them: in place of its ResNet."""
    name = str(hparams.get("backbone", "resnet50"))
    vit, dinov2 = bool(hparams.get("vit", False)), bool(hparams.get("dinov2", False))
    augmix = bool(hparams.get("resnet50_augmix", False))
    if name == "mnist_cnn" or not (vit or dinov2 or augmix):
        return "resnet18" if name == "resnet50" and hparams.get("resnet18", False) else name
    switches = ", ".join(k for k, on in (("vit", vit), ("dinov2", dinov2), ("resnet50_augmix", augmix)) if on)
    if not _is_resnet(name):
        raise UserError(f"hparams {switches} choose DomainBed HEAD's backbone in place of its ResNet, but hparam "
                        f"backbone is {name!r}: set backbone to resnet50, or drop {switches}")
    if vit or dinov2:
        if not (vit and dinov2):
            # DomainBed refuses vit alone (NotImplementedError) and quietly keeps its ResNet
            # for dinov2 alone; both are refused here.
            raise UserError("DomainBed HEAD builds DINOv2 only with both hparams vit and dinov2 true; "
                            f"got vit={vit}, dinov2={dinov2}. For another ViT, set hparam backbone (e.g. vit_b_16)")
        return DINOV2
    return RESNET50_AUGMIX  # as in DomainBed, it takes precedence over resnet18


def build_featurizer(input_shape: tuple[int, ...], hparams: Mapping[str, Any]) -> Featurizer:
    """The featurizer that ``hparams`` describe (backbone, pretrained, ResNet / ViT dropout,
    freeze_bn, vit_attn_tune)."""
    name = resolve_backbone_name(hparams)
    trunk = create_trunk(name, input_shape, bool(hparams.get("pretrained", False)), hparams.get("weights_path") or None)
    freeze = hparams.get("freeze_bn", "auto")
    # auto: frozen for torchvision's ResNets (the published protocol); resnet50_augmix is
    # DomainBed HEAD's protocol, whose BatchNorm trains (its freeze_bn defaults to false).
    freeze_bn = (_is_resnet(name) and name != RESNET50_AUGMIX) if freeze == "auto" else bool(freeze)
    # As in DomainBed, resnet_dropout applies to ResNets only and vit_dropout to ViTs only
    # (neither to the MNIST CNN); both are drawn on every dataset.
    dropout = 0.0
    if _is_resnet(name):
        dropout = float(hparams.get("resnet_dropout", 0.0))
    elif _is_vit(name):
        dropout = float(hparams.get("vit_dropout", 0.0))
    if hparams.get("vit_attn_tune", False) and name != "mnist_cnn":
        if not _is_vit(name):
            raise UserError(f"hparam vit_attn_tune tunes the attention layers of a ViT; backbone {name!r} is not one "
                            "(DomainBed HEAD: set vit and dinov2 true)")
        attention_only(trunk)
    return Featurizer(trunk, dropout, freeze_bn)


def attention_only(trunk: nn.Module) -> None:
    """DomainBed HEAD's vit_attn_tune: train the parameters of the attention layers (every
    name containing ``attn``: qkv and output projections) and freeze all the others (patch
    and position embeddings, class token, LayerNorms, MLPs, LayerScales)."""
    for n, p in trunk.named_parameters():
        p.requires_grad_("attn" in n)


def build_classifier(in_features: int, num_classes: int, nonlinear: bool = False) -> nn.Module:
    """A linear head, or DomainBed's MLP head when ``nonlinear``."""
    if not nonlinear:
        return nn.Linear(in_features, num_classes)
    return nn.Sequential(
        nn.Linear(in_features, in_features // 2),
        nn.ReLU(),
        nn.Linear(in_features // 2, in_features // 4),
        nn.ReLU(),
        nn.Linear(in_features // 4, num_classes),
    )
