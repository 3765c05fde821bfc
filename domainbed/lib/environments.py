"""Checking test-environment indices against a dataset's number of environments.

One function for every place that takes test envs from a user (``train --test_envs``,
``sweep --test_envs_subset``, the image-folder datasets), so the rule and its message are
written once. It knows no dataset: the caller passes the count and the name.
"""

from __future__ import annotations

import numbers
from typing import Sequence

from domainbed.lib.errors import UserError


def check_test_envs(
    test_envs: Sequence[int],
    n_envs: int,
    *,
    flag: str = "--test_envs",
    dataset: str = "this dataset",
    for_training: bool = True,
) -> None:
    """Raise :class:`~domainbed.lib.errors.UserError` unless every index in ``test_envs`` is an environment of the dataset.

    ``flag`` and ``dataset`` name what the user typed and which dataset, for the message.
    With ``for_training`` (one run's test envs), duplicates are refused too and at least one
    environment must be left to train on; a sweep's subset of envs to cover needs neither.
    """
    bad = [e for e in test_envs if isinstance(e, bool) or not isinstance(e, numbers.Integral) or not 0 <= e < n_envs]
    if bad:
        raise UserError(f"{flag} {bad} out of range: {dataset} has environments 0..{n_envs - 1}")
    if not for_training:
        return
    if len(set(test_envs)) != len(test_envs):
        raise UserError(f"{flag} has duplicates: {list(test_envs)}")
    if len(test_envs) >= n_envs:
        raise UserError("at least one environment must remain for training")
