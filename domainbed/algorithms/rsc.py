"""RSC: Representation Self-Challenging (Huang et al., arXiv 2007.02454).

Each update mutes the features with the largest gradient of the true-class logit (the
top ``rsc_f_drop_factor`` fraction of each sample's features, Eq. 1-3), but only for the
samples whose true-class probability drops the most when muted (the top
``rsc_b_drop_factor`` fraction of the batch, Section 3.3), and trains on the result.
Percentiles use linear interpolation, as ``numpy.percentile`` does by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from domainbed.algorithms._support import pool
from domainbed.algorithms.base import Algorithm, LossOutput, Minibatches, cross_entropy
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.hparam import HParam, uniform


def rsc_feature_mask(grads: Tensor, drop_factor: float) -> Tensor:
    """1 where a feature's gradient is below its sample's ``(1 - drop_factor)`` quantile
    (kept), 0 for the top ``drop_factor`` fraction (muted). ``grads``: ``(n, d)``."""
    q = torch.quantile(grads.float(), 1.0 - drop_factor, dim=1, keepdim=True)
    return (grads.float() < q).float()


def rsc_sample_mask(changes: Tensor, drop_factor: float) -> Tensor:
    """1 for samples whose confidence drop is below the batch's ``(1 - drop_factor)``
    quantile: those are left unmuted. ``changes``: ``(n,)``; returns ``(n, 1)``."""
    q = torch.quantile(changes.float(), 1.0 - drop_factor)
    return (changes.float() < q).float().unsqueeze(1)


@register_algorithm
class RSC(Algorithm):
    """Cross-entropy on features muted where they matter most for the true class.

    FT-LP composes with it: the prior acts on the unmuted features of the batch.
    """

    EXPOSES_FEATURES = True
    HPARAMS = {
        "rsc_f_drop_factor": HParam(1 / 3, uniform(0, 0.5), "fraction of each sample's features muted"),
        "rsc_b_drop_factor": HParam(1 / 3, uniform(0, 0.5), "fraction of the batch whose features are muted"),
    }

    def compute_loss(self, minibatches: Minibatches) -> LossOutput:
        x, y, _ = pool(minibatches)
        feats = self.featurize(x)
        f = feats.final
        logits = self.classifier(f)
        onehot = F.one_hot(y, self.num_classes).to(logits.dtype)
        # Eq. 1: gradient of the true-class logit with respect to the representation.
        grads = torch.autograd.grad((logits * onehot).sum(), f)[0]
        with torch.no_grad():
            mask_f = rsc_feature_mask(grads, float(self.hparams["rsc_f_drop_factor"]))
            p = F.softmax(logits.float(), dim=1)
            p_muted = F.softmax(self.classifier(f * mask_f.to(f.dtype)).float(), dim=1)
            changes = ((p - p_muted) * onehot.float()).sum(1)
            mask_b = rsc_sample_mask(changes, float(self.hparams["rsc_b_drop_factor"]))
            mask = torch.maximum(mask_f, mask_b)  # logical or
        loss = cross_entropy(self.classifier(f * mask.to(f.dtype)), y)
        return loss, {"loss_ce": loss.detach(), "rsc_muted": 1 - mask.mean()}, {"x": x, "y": y, "features": feats, "logits": logits}
