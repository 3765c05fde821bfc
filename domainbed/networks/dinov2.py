"""DINOv2 ViT-B/14 as DomainBed HEAD uses it (hparams ``vit`` and ``dinov2``).

The features are the class tokens of the last four blocks and the mean of the last block's
patch tokens, each after the final LayerNorm, concatenated: 5 x 768 = 3840 features. This
is DINOv2's linear-probe recipe, which DomainBed HEAD takes through DINOv2's
``get_intermediate_layers(x, n=4, return_class_token=True)``.

The architecture is timm's ``vit_base_patch14_dinov2`` built at the dataset's image size.
Weights load from Meta's release file (``dinov2_vitb14_pretrain.pth``, the file
``torch.hub.load('facebookresearch/dinov2', 'dinov2_vitb14')`` caches) or timm's copy; the
position embeddings, stored for 518 px, are resampled once at load time (bicubic), where
DINOv2's hub model interpolates them at every forward pass. Both give 16 x 16 patches at
224 px; the interpolated values differ slightly (timm antialiases).
"""

from __future__ import annotations

import torch
from torch import nn

from domainbed.lib.errors import UserError

# The timm architecture and pretrained tag of DomainBed HEAD's DINOv2 (torch hub: dinov2_vitb14).
DINOV2_ARCH = "vit_base_patch14_dinov2.lvd142m"
N_BLOCKS = 4  # class tokens of the last four blocks


class DinoV2Features(nn.Module):
    """A DINOv2 ViT whose output is DomainBed HEAD's 5 x width feature vector."""

    def __init__(self, image_size: int, arch: str = DINOV2_ARCH):
        super().__init__()
        import timm

        patch = 14
        if image_size % patch:
            raise UserError(f"DINOv2 splits images into {patch} px patches; hparam image_size {image_size} is not a "
                            f"multiple of {patch} (DomainBed uses 224)")
        self.vit = timm.create_model(arch, pretrained=False, num_classes=0, img_size=image_size)
        self.num_features = (N_BLOCKS + 1) * int(self.vit.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = self.vit.forward_intermediates(x, indices=N_BLOCKS, return_prefix_tokens=True, norm=True,
                                                output_fmt="NLC", intermediates_only=True)
        class_tokens = [prefix[:, 0] for _, prefix in layers]
        patch_mean = layers[-1][0].mean(dim=1)
        return torch.cat([*class_tokens, patch_mean], dim=1)

    def forward_intermediates(self, x: torch.Tensor):
        raise UserError("the dinov2 backbone exposes no intermediate feature maps: algorithms that regularise "
                        "intermediate features (MIRO, FT-LP's stages) need a ResNet, EfficientNet or timm backbone")
