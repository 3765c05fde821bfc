"""Which layers of a pretrained prior carry per-image information, per resolution and normalisation.

For FT-LP's layers (the stem/stage outputs timm's ``forward_intermediates`` returns, and the
pooled final features) it prints the fraction of *dead* channels: channels whose value is
constant over a batch of source images (standard deviation < 1e-6), so they tell the
regulariser nothing about the image. Two BatchNorm modes: the prior's ImageNet running
statistics (eval mode) and the batch's own statistics (what FT-LP's prior uses when the
trained network normalises with batch statistics). Two input scalings: ImageNet mean/std and
the scaling the weight file expects (``domainbed.networks.weights.INPUT_NORMALISATION``).

    python benchmarks/prior_liveness.py --backbone efficientnet_lite0 --sizes 32 64
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import torch
from torch import nn

from domainbed.algorithms.ftlp.diagnostics import dead_channel_fraction
from domainbed.datasets import build_dataset
from domainbed.networks import build_featurizer


def _set_bn_batch_stats(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
            m.momentum = 0.0  # batch statistics, running statistics untouched


def measure(backbone: str, size: int, bn_mode: str, rescale: bool, images: torch.Tensor) -> list[float]:
    f = build_featurizer((3, size, size), {"backbone": backbone, "pretrained": True, "freeze_bn": False})
    if not rescale:
        f.input_rescale = None
    f.eval()
    if bn_mode == "batch":
        _set_bn_batch_stats(f)
    x = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
    with torch.no_grad():
        out = f.forward_features(x, intermediates=True)
    return [dead_channel_fraction(t) for t in (*out.intermediates, out.final)]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--dataset", default="RotatedMNISTSubset")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--n", type=int, default=48, help="images (the first of each training domain, pooled)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    ds = build_dataset(args.dataset, None, [], {"image_size": 32, "data_augmentation": False})
    per = max(1, args.n // len(ds))
    images = torch.cat([torch.stack([ds[e][i][0] for i in range(per)]) for e in range(len(ds))])
    print(f"# dead-channel fraction (%), {args.backbone}, {len(images)} images of {args.dataset}")
    header = None
    for size in args.sizes:
        for rescale in (False, True):
            for bn_mode in ("running", "batch"):
                fr = measure(args.backbone, size, bn_mode, rescale, images)
                if header is None:
                    header = [f"stage{i}" for i in range(len(fr) - 1)] + ["final"]
                    print("| px | input scaling | BatchNorm | " + " | ".join(header) + " |")
                    print("|---|---|---|" + "---|" * len(header))
                scaling = "weights' own" if rescale else "ImageNet mean/std"
                print(f"| {size} | {scaling} | {bn_mode} | " + " | ".join(f"{100 * v:.1f}" for v in fr) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
