"""FT-LP variants the benchmark compares with, not part of the package: FT-LP as it is
usually written (configuration e) and a candidate optimisation of the prior (BN folding)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from domainbed.algorithms.ftlp.variants import ERM_FTLP
from domainbed.networks import Features


class NaiveFTLP(ERM_FTLP):
    """FT-LP as it is usually written: the prior is an fp32 copy of the network, run with
    autocast switched off, under ``torch.no_grad`` (not ``inference_mode``). The loss is the
    package's, so (c) and (e) differ only in how the prior is run (and, in the loop, in the
    per-term host syncs). Deliberately not registered: it is a baseline, not a method."""

    def setup(self, device: torch.device | str | None = None) -> "NaiveFTLP":
        super().setup(device)
        self.prior_network.float()  # undo the package's cast to the autocast dtype
        return self

    def prior_features(self, x: torch.Tensor) -> Features:
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            return self.prior_network.forward_features(x.float(), intermediates=self.ftlp_cfg.uses_stages)


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d`` (in the order
    children are registered, which is the forward order in timm's ResNets) into that conv.
    Only valid for a frozen network in eval mode, which the prior is. Returns the count."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for parent in list(module.modules()):
        names = list(parent._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = parent._modules[first], parent._modules[second]
            # type() is exact on purpose: timm's BatchNormAct2d subclasses BatchNorm2d but
            # also applies an activation, which cannot be folded into the conv.
            if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                parent._modules[first] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                parent._modules[second] = nn.Identity()
                folded += 1
    return folded


class FoldedPriorFTLP(ERM_FTLP):
    """ERM_FTLP whose frozen prior has BatchNorm folded into its convolutions (a candidate
    optimisation, not in the package): fewer memory-bound kernels in the prior forward. The
    fold is checked numerically at construction and undone if it changes the features."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        prior = self.prior_network
        original = copy.deepcopy(prior)
        probe = torch.randn(2, *self.input_shape, generator=torch.Generator().manual_seed(0))
        self.folded_bn = fold_batchnorm(prior)
        with torch.no_grad():
            ok = torch.allclose(original(probe), prior(probe), rtol=1e-3, atol=1e-4)
        if not ok:  # pattern not as expected for this backbone: keep the exact prior
            object.__setattr__(self, "_prior_net", original)
            self.folded_bn = 0

