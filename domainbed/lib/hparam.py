"""One hyper-parameter's declaration: its default and its random-search distribution.

This module imports nothing of ours but the error type, so algorithms and datasets can
declare their hparams where they are defined without importing the hparams registry
(which merges, samples and checks).
Samplers take a ``numpy.random.RandomState`` and make exactly the calls DomainBed's
distributions make, so a draw from the same seed gives the same value.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np

from domainbed.lib.errors import UserError

Sampler = Callable[[np.random.RandomState], Any]

# Dataset families whose images are 28 px digits (DomainBed's SMALL_IMAGES): their
# algorithms use other defaults and ranges for some hparams.
SMALL_FAMILIES = frozenset({"mnist", "debug28"})


@dataclass(frozen=True)
class HParam:
    """One hyper-parameter: its default, its random-search distribution and, for a
    categorical one, the values it accepts (``choices``; the search may draw from fewer).

    A numeric ``choice(...)`` distribution is only a search grid: any value is accepted.
    """

    default: Any
    sample: Sampler | None = None  # None: the default is also used by random search
    help: str = ""
    choices: tuple[Any, ...] = ()  # empty: any value

    def check(self, name: str, value: Any) -> None:
        """Refuse a value outside ``choices`` (with a message naming them)."""
        if self.choices and value not in self.choices:
            raise UserError(f"hparam {name} must be one of {', '.join(map(str, self.choices))}; got {value!r}")

    def draw(self, rng: np.random.RandomState) -> Any:
        return self.default if self.sample is None else self.sample(rng)

    def on_datasets(self, **defaults: Any) -> "PerDataset":
        """This hparam with another default on some datasets, keyed as :class:`PerDataset`
        reads them (a class name or a family): ``HParam(0.3, ...).on_datasets(VLCS=0.2)``.
        The distribution, help and choices stay the same everywhere, so a method declares its
        published per-dataset values in its own file."""
        return PerDataset(self, {name: replace(self, default=value) for name, value in defaults.items()})


@dataclass(frozen=True)
class PerFamily:
    """An hparam whose default and distribution differ on small digit images (28 px) and
    on the other (image) datasets, as several of DomainBed's algorithm hparams do."""

    small: HParam
    image: HParam

    def resolve(self, family: str, dataset: str = "") -> HParam:
        return self.small if family in SMALL_FAMILIES else self.image


@dataclass(frozen=True)
class PerDataset:
    """An hparam whose default and distribution DomainBed sets per dataset (RDM's penalty
    weights and batch size, ADRMX's learning rate).

    ``cases`` maps a dataset's class name, a family name (``HPARAM_FAMILY``) or ``"small"``
    (the 28 px families) to its declaration, looked up in that order; other datasets get
    ``otherwise``. ``None`` declares nothing, so the dataset's own declaration stands (the
    calibrated lr and batch size of the digit-subset family, or the small-image batch size).
    """

    otherwise: HParam | None
    cases: Mapping[str, HParam | None] = field(default_factory=dict)

    def resolve(self, family: str, dataset: str = "") -> HParam | None:
        for key in (dataset, family, "small" if family in SMALL_FAMILIES else None):
            if key in self.cases:
                return self.cases[key]
        return self.otherwise


def log_uniform(lo: float, hi: float) -> Sampler:
    """``10 ** U(lo, hi)``."""
    return lambda r: float(10 ** r.uniform(lo, hi))


def uniform(lo: float, hi: float) -> Sampler:
    """``U(lo, hi)``."""
    return lambda r: float(r.uniform(lo, hi))


def int_uniform(lo: float, hi: float) -> Sampler:
    """``int(U(lo, hi))``."""
    return lambda r: int(r.uniform(lo, hi))


def pow2_int(lo: float, hi: float) -> Sampler:
    """``int(2 ** U(lo, hi))``, DomainBed's batch-size distribution."""
    return lambda r: int(2 ** r.uniform(lo, hi))


def choice(*values: Any) -> Sampler:
    """One of ``values``, uniformly (the same draw as ``RandomState.choice(values)``)."""
    return lambda r: values[r.choice(len(values))]
