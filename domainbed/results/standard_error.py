"""The two standard errors of the results: one for accuracies, one for paired gains.

* **Accuracy** (a cell's mean test accuracy over trial seeds): DomainBed's convention
  (arXiv 2007.01434), the population standard deviation (ddof 0) divided by √n, 0 for one
  trial. Kept so that DomainBed's published tables reproduce digit for digit.
* **Paired gain** (treatment − baseline over the trial seeds both ran): the sample standard
  deviation (ddof 1) divided by √n, the estimate a Student-t interval needs; there is none
  for one trial (NaN).

Every table caption and figure note says which one it shows (:data:`ACCURACY_SE`,
:data:`GAIN_SE`). Nothing else in the package computes a standard error.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

ACCURACY_SE = "SE = population std / sqrt(n), DomainBed's convention"
GAIN_SE = "SE = sample std (ddof 1) / sqrt(n); no SE for n = 1"


def accuracy_mean_se(values: Sequence[float] | np.ndarray) -> tuple[float, float, int]:
    """``(mean, SE, n)`` of accuracies over trials, SE = population std (ddof 0) / √n.

    ``values`` must not be empty (a missing cell has no number at all)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise ValueError("accuracy_mean_se needs at least one value")
    return float(arr.mean()), float(arr.std(ddof=0) / math.sqrt(arr.size)), int(arr.size)


def gain_mean_se(values: Sequence[float] | np.ndarray) -> tuple[float, float, int]:
    """``(mean, SE, n)`` of paired differences over trials, SE = sample std (ddof 1) / √n;
    SE is NaN for n < 2, and the mean NaN for n = 0."""
    arr = np.asarray(values, dtype=float)
    n = int(arr.size)
    if n == 0:
        return math.nan, math.nan, 0
    se = float(arr.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return float(arr.mean()), se, n
