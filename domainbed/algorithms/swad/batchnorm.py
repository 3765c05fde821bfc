"""Recompute the BatchNorm running statistics of a weight-averaged model.

Averaged weights do not match the running statistics accumulated along the way, so
SWAD (arXiv 2102.08604), like SWA (arXiv 1803.05407), re-estimates them on training data.

How :func:`recompute_bn` differs from ``torch.optim.swa_utils.update_bn``: both reset
every BatchNorm layer and set its momentum to ``None`` (an equal-weight average over the
batches seen), then restore the momenta. ``update_bn`` puts the whole model in training
mode, consumes the entire loader and finally sets every module to the model's former
mode. :func:`recompute_bn` stops after ``n_batches`` (the training loaders here never run
out), switches only the BatchNorm layers to training mode (dropout stays off, so it does
not distort the statistics) and restores each module's own mode. On a model without
dropout, given the same batches, both give the same statistics (tested).
"""

from __future__ import annotations

import itertools
from typing import Iterable

import torch
from torch import Tensor, nn

__all__ = ["recompute_bn"]


@torch.no_grad()
def recompute_bn(model: nn.Module, batches: Iterable[Tensor], n_batches: int) -> int:
    """Set the BatchNorm running statistics of ``model`` from ``n_batches`` input batches.

    Only needed when BN is not frozen: with frozen BN (DomainBed's ResNets) the statistics
    never changed and this must not be called.

    Args:
        batches: input tensors (e.g. the training domains' images concatenated); they are
            moved to the model's device. May be infinite.
        n_batches: how many batches to use (fewer if the iterable runs out).

    Returns:
        The number of batches used (0 if the model has no BatchNorm layer).
    """
    if n_batches < 1:
        raise ValueError(f"n_batches must be >= 1, got {n_batches}.")
    bn_layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bn_layers:
        return 0
    iterator = iter(batches)
    # Fetch the first batch before resetting anything, so an empty loader leaves the
    # model untouched.
    first = next(iterator, None)
    if first is None:
        raise ValueError("recompute_bn got no batches; pass a non-empty loader.")
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in bn_layers}
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    used = 0
    try:
        model.eval()
        for layer in bn_layers:
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average: every batch weighs the same
            layer.train()
        for x in itertools.islice(itertools.chain([first], iterator), n_batches):
            model(x.to(device))
            used += 1
    finally:
        for module, mode in modes.items():
            module.training = mode
        for layer, momentum in momenta.items():
            layer.momentum = momentum
    return used
