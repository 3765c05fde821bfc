"""Hyper-parameters with DomainBed's semantics (docs/design.md).

* ``hparams_seed == 0`` gives the defaults.
* Otherwise every hparam is drawn from its own ``RandomState`` seeded with
  ``seed_hash(seed_hash(hparams_seed, trial_seed), name)``, so adding a hparam never
  shifts the draws of the others.

Nothing is declared here: each dataset class declares the hparams every algorithm gets on
it and its own defaults (``MultipleDomainDataset.HPARAMS``, ``HPARAM_DEFAULTS``), each
algorithm class its own hparams (``Algorithm.HPARAMS``, with the per-dataset defaults a
method published: SWAD's tolerance, MIRO's λ); subclasses inherit their bases'.
This module merges them and samples. Defaults and draws equal DomainBed's except for our
own hparams (tests/test_hparams_domainbed.py lists them).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Mapping

import numpy as np

from domainbed.algorithms import get_algorithm_class
from domainbed.datasets import MultipleDomainDataset, get_dataset_class
from domainbed.lib.errors import UserError
from domainbed.lib.hparam import HParam, PerDataset, PerFamily, Sampler, choice, log_uniform, pow2_int, uniform
from domainbed.lib.seeding import seed_hash

__all__ = ["HParam", "PerDataset", "PerFamily", "Sampler", "choice", "log_uniform", "pow2_int", "uniform",
           "default_hparams", "get_hparams", "hparam_specs", "random_hparams", "parse_overrides"]


def hparam_specs(algorithm: str, dataset: str | type[MultipleDomainDataset]) -> dict[str, HParam]:
    """Every hparam of ``algorithm`` on ``dataset`` (a name, a folder path or a dataset class).

    In order: the dataset's ``hparam_specs()`` (those every algorithm has there); the
    algorithm's, which win (ARM's fixed batch_size), ``PerFamily`` ones resolved by the
    dataset's ``HPARAM_FAMILY``, ``PerDataset`` ones by its class name or family (``None``
    keeps the dataset's own; a method's published per-dataset defaults, ``HParam.on_datasets``,
    are ``PerDataset`` too); then the dataset's ``HPARAMS_FOLLOW`` and its
    ``hparam_defaults()``, which change only hparams already there and keep their
    distributions.
    """
    data = dataset if isinstance(dataset, type) else get_dataset_class(dataset)
    family = data.HPARAM_FAMILY
    specs = data.hparam_specs()
    for name, spec in get_algorithm_class(algorithm).hparam_specs().items():
        resolved = spec.resolve(family, data.__name__) if isinstance(spec, (PerFamily, PerDataset)) else spec
        if resolved is not None:  # None: the dataset's own declaration stands
            specs[name] = resolved
    for name, like in data.HPARAMS_FOLLOW.items():
        if name in specs:
            specs[name] = replace(specs[name], default=specs[like].default, sample=specs[like].sample)
    for name, value in data.hparam_defaults().items():
        if name in specs:
            specs[name] = replace(specs[name], default=value)
    return specs


def default_hparams(algorithm: str, dataset: str | type[MultipleDomainDataset]) -> dict[str, Any]:
    return {name: spec.default for name, spec in hparam_specs(algorithm, dataset).items()}


def random_hparams(algorithm: str, dataset: str | type[MultipleDomainDataset], seed: int) -> dict[str, Any]:
    """DomainBed-style random draw; ``seed`` is ``seed_hash(hparams_seed, trial_seed)``.

    Each hparam is drawn from a generator seeded with ``seed_hash(seed, name)``, as DomainBed
    does with a new ``RandomState`` per hparam; re-seeding one ``RandomState`` gives exactly
    the same stream at about a hundredth of the cost of constructing one.
    """
    rng = np.random.RandomState()
    draws = {}
    for name, spec in hparam_specs(algorithm, dataset).items():
        rng.seed(seed_hash(seed, name))
        draws[name] = spec.draw(rng)
    return draws


def parse_overrides(text: str | None) -> dict[str, Any]:
    """Parse ``--hparams`` JSON; the error says what is wrong with it."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"--hparams is not valid JSON ({e.msg} at character {e.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise UserError(f"--hparams must be a JSON object such as '{{\"lr\": 1e-4}}', got {text!r}")
    return value


def get_hparams(
    algorithm: str,
    dataset: str,
    hparams_seed: int = 0,
    trial_seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The hparams of one run: defaults or a random draw, then validated user overrides.

    Every categorical hparam (one declared with ``choices``) is checked here, at start-up,
    whatever set it: a value outside its choices is a :class:`UserError`.
    """
    specs = hparam_specs(algorithm, dataset)
    if hparams_seed == 0:
        hparams = default_hparams(algorithm, dataset)
    else:
        hparams = random_hparams(algorithm, dataset, seed_hash(hparams_seed, trial_seed))
    unknown = sorted(set(overrides or {}) - set(hparams))
    if unknown:
        raise UserError(
            f"unknown hparam(s) {', '.join(unknown)} for {algorithm} on {dataset}. "
            f"Valid keys: {', '.join(sorted(hparams))}"
        )
    hparams.update(overrides or {})
    for name, spec in specs.items():
        spec.check(name, hparams[name])
    return hparams
