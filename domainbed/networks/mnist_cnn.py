"""DomainBed's small convolutional network for 28x28 MNIST-style inputs.

Four 3x3 convolutions (64, 128, 128, 128 channels; the second with stride 2), each
followed by ReLU and GroupNorm with 8 groups, then global average pooling: 128 features.
"""

from __future__ import annotations

import torch
from torch import nn


class MNISTConvNet(nn.Module):
    num_features = 128

    def __init__(self, in_channels: int):
        super().__init__()
        widths = [(in_channels, 64, 1), (64, 128, 2), (128, 128, 1), (128, 128, 1)]
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cin, cout, 3, stride=s, padding=1), nn.ReLU(), nn.GroupNorm(8, cout))
            for cin, cout, s in widths
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        # As timm models describe theirs: the module whose output is each intermediate, and
        # its stride (reduction) relative to the input.
        self.feature_info = []
        reduction = 1
        for i, (_, cout, stride) in enumerate(widths):
            reduction *= stride
            self.feature_info.append({"module": f"blocks.{i}", "num_chs": cout, "reduction": reduction})

    def forward_intermediates(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Same API as timm: the last feature map and the output of every block."""
        inter = []
        for block in self.blocks:
            x = block(x)
            inter.append(x)
        return x, inter

    def forward_head(self, x: torch.Tensor, pre_logits: bool = True) -> torch.Tensor:
        return self.pool(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.forward_head(x)
