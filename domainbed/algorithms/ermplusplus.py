"""ERM++ (Teterwak et al., "ERM++: An Improved Baseline for Domain Generalization",
arXiv 2304.01973), the training rule DomainBed's ``train`` applies to it.

ERM with two changes to how the network is trained and which weights are reported:

* **Linear probing first.** While at most ``linear_steps`` updates are done (DomainBed's
  counter, so ``linear_steps + 1`` updates), only the classifier trains, at ``linear_lr``;
  then the whole network trains at ``lr`` with a fresh optimizer (the same optimizer kind:
  Adam, or LARS with ``lars``).
* **Weight averaging.** The reported network is a simple moving average of the weights: a
  copy of the network until update :attr:`SMA_START` (600), then the running mean of the
  weights from update 599 on. Floating buffers (BatchNorm statistics) are averaged too; when
  BatchNorm is not frozen, the averaged network then runs once on the batch in training
  mode, which moves its running statistics toward the batch's, as DomainBed does.
  Every evaluation, the saved model and :meth:`build_predictor` use the average.

The average is a submodule and the update count a buffer, so a checkpoint carries both. The
one optimizer keeps the same two groups (featurizer, classifier) in both phases, so its
saved state loads whichever phase the run was in.

Not implemented, deliberately: the paper's other ingredients that are options of DomainBed
rather than of this algorithm (its backbone and weights: the ``resnet50_augmix`` /
``dinov2`` hparams; the full-data and longer-training protocol), and the automatic
learning-rate schedule of DomainBed's separate ``train_autolr`` script (a two-pass procedure
that reruns training with a schedule found on validation loss; DomainBed's ``train`` never
uses it, and neither do we).
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Mapping

import torch
from torch import Tensor, nn

from domainbed.algorithms.base import Minibatches, Predictor
from domainbed.algorithms.counters import UpdateCounter
from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.hparam import HParam, log_uniform

DOMAINBED_LINEAR_STEPS = 500  # DomainBed's default of the hparam linear_steps


def moving_average_(average: nn.Module, current: nn.Module, n_averaged: int) -> None:
    """In place: ``average ← (n_averaged · average + current) / (n_averaged + 1)`` for every
    floating tensor of the state dict; ``n_averaged = 0`` copies ``current``. Integer tensors
    are copied, except BatchNorm's ``num_batches_tracked``, which ``average`` keeps."""
    mine, theirs = average.state_dict(), current.state_dict()
    if mine.keys() != theirs.keys():
        raise ValueError("moving_average_ needs two modules with the same state-dict keys")
    with torch.no_grad():
        for key, a in mine.items():
            c = theirs[key]
            if key.endswith("num_batches_tracked"):
                continue
            if n_averaged > 0 and a.is_floating_point():
                a.mul_(n_averaged / (n_averaged + 1.0)).add_(c, alpha=1.0 / (n_averaged + 1.0))
            else:
                a.copy_(c)


def _has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


@register_algorithm
class ERMPlusPlus(ERM):
    """ERM with a linear-probing phase and a moving average of the weights (module docstring)."""

    EXPOSES_FEATURES = True
    USES_LINEAR_STEPS = True
    SMA_START: ClassVar[int] = 600  # DomainBed's sma_start_iter
    HPARAMS = {"linear_lr": HParam(5e-5, log_uniform(-5, -3.5), "learning rate of the classifier in the linear-probing phase")}

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Mapping[str, Any]):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.updates_done = UpdateCounter()
        average = Predictor({"featurizer": copy.deepcopy(self.featurizer), "classifier": copy.deepcopy(self.classifier)})
        self.average = average.requires_grad_(False)

    @property
    def linear_steps(self) -> int:
        return int(self.hparams.get("linear_steps", DOMAINBED_LINEAR_STEPS))

    def in_linear_phase(self) -> bool:
        """Whether the next update trains only the classifier."""
        return self.updates_done.value <= self.linear_steps

    def param_groups(self) -> list[dict[str, Any]]:
        groups = super().param_groups()
        classifier = set(self.classifier.parameters())
        featurizer = [p for p in groups[0]["params"] if p not in classifier]
        head: dict[str, Any] = {"params": list(self.classifier.parameters())}
        if self.in_linear_phase():
            head["lr"] = float(self.hparams["linear_lr"])
        return [{"params": featurizer}, head] + groups[1:]

    def update(self, minibatches: Minibatches, unlabeled: list[Tensor] | None = None) -> dict[str, Tensor]:
        minibatches = self.begin_update(minibatches)
        assert self.optimizer is not None and self.scaler is not None
        if self.updates_done.value == self.linear_steps + 1:
            # Full fine-tuning starts: a fresh optimizer over every group at lr.
            self.optimizer = self.configure_optimizer()
        linear = self.in_linear_phase()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss, logs, _ = self.compute_loss(minibatches)
        # Linear probing: gradients for the classifier only (no backward through the featurizer).
        self.scaler.scale(loss).backward(inputs=list(self.classifier.parameters()) if linear else None)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        done = self.updates_done.increment()
        moving_average_(self.average, self._network(), max(0, done - self.SMA_START + 1))
        if not self.featurizer.freeze_bn and _has_batchnorm(self.average):
            with torch.no_grad(), self.autocast():
                self.average.train()(torch.cat([x for x, _ in minibatches]))
        out = {"loss": loss.detach().float(), "linear_phase": torch.tensor(float(linear))}
        out.update({k: v.detach().float() for k, v in logs.items()})
        return out

    def _network(self) -> nn.Module:
        return Predictor({"featurizer": self.featurizer, "classifier": self.classifier})

    def predict(self, x: Tensor) -> Tensor:
        return self.average.eval()(x)

    def predictive_state(self) -> dict[str, Tensor]:
        return dict(self.average.state_dict())
