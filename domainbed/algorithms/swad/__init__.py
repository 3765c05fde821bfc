"""SWAD (Cha et al., arXiv 2102.08604), the whole method in one folder.

- ``algorithm.py``: the ``SWAD`` algorithm (ERM whose reported model is the average of its
  weights over the loss valley), registered with ``averaged_model=True``.
- ``loss_valley.py``: which segments between evaluations join the average (``swad_rule``).
- ``weight_averaging.py``: per-segment weight sums, merged over the accepted segments.
- ``batchnorm.py``: BatchNorm statistics recomputed for the averaged weights.

Used by the algorithm registry (importing :mod:`domainbed.algorithms` registers ``SWAD``, and
the FT-LP rule adds ``SWAD_FTLP``); the training loop reaches the average only through the
``Algorithm`` hooks (``on_step_end``, ``on_evaluation``, ``should_stop``, ``on_train_end``,
``eval_network``).
"""

from domainbed.algorithms.swad.algorithm import SWAD
from domainbed.algorithms.swad.batchnorm import recompute_bn
from domainbed.algorithms.swad.loss_valley import LossValley
from domainbed.algorithms.swad.weight_averaging import SegmentAverager, WeightAverager

__all__ = ["LossValley", "SWAD", "SegmentAverager", "WeightAverager", "recompute_bn"]
