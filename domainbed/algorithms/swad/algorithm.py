"""SWAD: dense stochastic weight averaging inside the loss valley (Cha et al., arXiv 2102.08604).

Weights are summed at every step inside segments between evaluations. The valley starts
when the oldest of the last ``swad_n_converge`` segments has the lowest training-domain
validation loss; it ends (and training stops) once the last ``swad_n_tolerance`` segments
all exceed ``mean(window) × (1 + swad_tolerance_ratio)``. Which segments are averaged,
and with what weights, follows ``swad_rule`` (``loss_valley.py``): by default what the
authors' released code computes. The averaged model is what ``eval_network()`` returns
once averaging has begun, and what is saved and reported; as in that code, its BatchNorm
statistics are recomputed on 500 training batches unless BatchNorm is frozen.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import torch
from torch import nn

from domainbed.algorithms.base import Predictor
from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm
from domainbed.algorithms.swad.batchnorm import recompute_bn
from domainbed.algorithms.swad.loss_valley import RULES
from domainbed.algorithms.swad.weight_averaging import SegmentAverager
from domainbed.lib.hparam import HParam


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


@register_algorithm(averaged_model=True)
class SWAD(ERM):
    """ERM whose reported model is the SWAD average of its weights."""

    HPARAMS = {
        "swad_n_converge": HParam(3, help="segments in the window that detects the valley's start"),
        "swad_n_tolerance": HParam(6, help="segments above the threshold that end the valley"),
        # SWAD's published tolerance for VLCS; 0.3 elsewhere.
        "swad_tolerance_ratio": HParam(0.3, help="threshold = mean window loss × (1 + ratio); 0.2 for VLCS"
                                       ).on_datasets(VLCS=0.2),
        "swad_bn_batches": HParam(500, help="batches used to recompute BatchNorm statistics when BN is not frozen (SWAD's code: 500)"),
        "swad_rule": HParam("official", help="official: the segments and equal per-segment weights of SWAD's released code; "
                            "paper: from the lowest-loss segment to the valley's end, each step once (algorithms/swad/loss_valley.py)",
                            choices=RULES),
    }

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Mapping[str, Any]):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        h = self.hparams
        # Not registered submodules: the averages are not trained, and not part of state_dict().
        object.__setattr__(self, "swad", SegmentAverager(
            int(h["swad_n_converge"]), int(h["swad_n_tolerance"]), float(h["swad_tolerance_ratio"]),
            str(h.get("swad_rule", "official"))))  # absent from the hparams of runs saved before it existed
        object.__setattr__(self, "_averaged", None)

    # state_dict() carries the averaging state, so a resumed run continues the same average.
    def get_extra_state(self) -> dict[str, Any]:
        return {"swad": self.swad.state_dict()}

    def set_extra_state(self, state: Mapping[str, Any]) -> None:
        self.swad.load_state_dict(state["swad"])

    def on_step_end(self, step: int) -> None:
        self.swad.step(self.predictive_state())

    def on_evaluation(self, step: int, results: Mapping[str, float]) -> None:
        self.swad.end_segment(float(results["val_loss"]))

    @property
    def should_stop(self) -> bool:
        return self.swad.should_stop

    def _averaged_predictor(self) -> Predictor:
        predictor = self.build_predictor()
        self.swad.load_into(predictor)
        return predictor

    def on_train_end(self, batches: Iterator[torch.Tensor] | None = None) -> None:
        self.swad.finish()
        predictor = self._averaged_predictor()
        if not self.featurizer.freeze_bn and has_batchnorm(predictor) and batches is not None:
            # Averaged weights do not match averaged BN statistics: recompute them.
            recompute_bn(predictor, batches, int(self.hparams["swad_bn_batches"]))
        object.__setattr__(self, "_averaged", predictor.eval())

    def eval_network(self) -> nn.Module:
        if self._averaged is not None:
            return self._averaged
        if self.swad.has_average:
            return self._averaged_predictor().eval()
        return self
