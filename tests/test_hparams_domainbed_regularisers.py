"""The Tier-2 algorithms' own hparams equal DomainBed's: names, defaults and random draws.

The table below is written from DomainBed's published hparams registry (each entry: the
default, and the random distribution as a function of a ``numpy.random.RandomState``).
DomainBed draws each hparam from ``RandomState(seed_hash(seed_hash(hparams_seed,
trial_seed), name))``; hparams_seed 0 means the defaults. None of these algorithms' blocks
depends on the dataset in DomainBed, so one table serves the small-image (Debug28) and the
image (PACS) families alike; both are checked.
"""

from __future__ import annotations

import numpy as np
import pytest

from domainbed import hparams_registry as hr
from domainbed.algorithms import get_algorithm_class
from domainbed.lib.seeding import seed_hash

CAD_TABLE = {
    "lmbda": (1e-1, lambda r: r.choice([1e-4, 1e-3, 1e-2, 1e-1, 1, 1e1, 1e2])),
    "temperature": (0.1, lambda r: r.choice([0.05, 0.1])),
    "is_normalized": (False, lambda r: False),
    "is_project": (False, lambda r: False),
    "is_flipped": (True, lambda r: True),
}
IB_TABLE = {
    "ib_lambda": (1e2, lambda r: 10 ** r.uniform(-1, 5)),
    "ib_penalty_anneal_iters": (500, lambda r: int(10 ** r.uniform(0, 4))),
}
CAUSIRL_TABLE = {"mmd_gamma": (1.0, lambda r: 10 ** r.uniform(-1, 1))}

DOMAINBED = {
    "Fish": {"meta_lr": (0.5, lambda r: r.choice([0.05, 0.1, 0.5]))},
    "SD": {"sd_reg": (0.1, lambda r: 10 ** r.uniform(-5, -1))},
    "ANDMask": {"tau": (1, lambda r: r.uniform(0.5, 1.0))},
    "IGA": {"penalty": (1000, lambda r: 10 ** r.uniform(1, 5))},
    "SANDMask": {
        "tau": (1.0, lambda r: r.uniform(0.0, 1.0)),
        "k": (1e1, lambda r: 10 ** r.uniform(-3, 5)),
    },
    "Fishr": {
        "lambda": (1000.0, lambda r: 10 ** r.uniform(1.0, 4.0)),
        "penalty_anneal_iters": (1500, lambda r: int(r.uniform(0.0, 5000.0))),
        "ema": (0.95, lambda r: r.uniform(0.90, 0.99)),
    },
    "TRM": {
        "cos_lambda": (1e-4, lambda r: 10 ** r.uniform(-5, 0)),
        "iters": (200, lambda r: int(10 ** r.uniform(0, 4))),
        "groupdro_eta": (1e-2, lambda r: 10 ** r.uniform(-3, -1)),
    },
    "IB_ERM": IB_TABLE,
    "IB_IRM": {
        "irm_lambda": (1e2, lambda r: 10 ** r.uniform(-1, 5)),
        "irm_penalty_anneal_iters": (500, lambda r: int(10 ** r.uniform(0, 4))),
        **IB_TABLE,
    },
    "CAD": CAD_TABLE,
    "CondCAD": CAD_TABLE,
    "EQRM": {
        "eqrm_quantile": (0.75, lambda r: r.uniform(0.5, 0.99)),
        "eqrm_burnin_iters": (2500, lambda r: 10 ** r.uniform(2.5, 3.5)),
        "eqrm_lr": (1e-6, lambda r: 10 ** r.uniform(-7, -5)),
    },
    "CausIRL_CORAL": CAUSIRL_TABLE,
    "CausIRL_MMD": CAUSIRL_TABLE,
    "SelfReg": {},  # no hparams of its own
}
DATASETS = ("Debug28", "PACS")  # a small-image and an image dataset


def domainbed_draw(algorithm: str, hparams_seed: int, trial_seed: int) -> dict:
    seed = seed_hash(hparams_seed, trial_seed)
    return {name: fn(np.random.RandomState(seed_hash(seed, name))) for name, (_, fn) in DOMAINBED[algorithm].items()}


@pytest.mark.parametrize("algorithm", sorted(DOMAINBED))
def test_names_match_domainbed(algorithm):
    assert set(get_algorithm_class(algorithm).hparam_specs()) == set(DOMAINBED[algorithm])


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("algorithm", sorted(DOMAINBED))
def test_defaults_and_random_draws_match_domainbed(algorithm, dataset):
    ours = hr.get_hparams(algorithm, dataset, 0, 0)
    for name, (default, _) in DOMAINBED[algorithm].items():
        assert ours[name] == default and type(ours[name]) is type(default), (name, ours[name], default)
    for hparams_seed in range(1, 20):
        for trial_seed in range(3):
            ours = hr.get_hparams(algorithm, dataset, hparams_seed, trial_seed)
            expected = domainbed_draw(algorithm, hparams_seed, trial_seed)
            for name, value in expected.items():
                assert ours[name] == value, (name, hparams_seed, trial_seed, ours[name], value)


def test_draws_actually_vary_and_stay_in_range():
    # Guards against a table and an implementation that would both return the default.
    draws = [hr.get_hparams("Fishr", "PACS", s, 0) for s in range(1, 20)]
    assert len({d["lambda"] for d in draws}) == 19
    assert all(10 <= d["lambda"] <= 1e4 and 0 <= d["penalty_anneal_iters"] < 5000 for d in draws)
    assert {hr.get_hparams("CAD", "Debug28", s, 1)["lmbda"] for s in range(1, 20)} <= {1e-4, 1e-3, 1e-2, 1e-1, 1, 10, 100}


# DomainBed HEAD's backbone switches, declared for every algorithm on every dataset. One
# deliberate difference: resnet50_augmix is false here, true in DomainBed HEAD (the published
# tables used torchvision's ResNet-50 with frozen BatchNorm; test_hparams_domainbed.DIFFERENT).
BACKBONE_TABLE = {
    "dinov2": (False, lambda r: False),
    "vit": (False, lambda r: False),
    "vit_attn_tune": (False, lambda r: False),
    "vit_dropout": (0.0, lambda r: r.choice([0.0, 0.1, 0.5])),
}
OUR_RESNET50_AUGMIX = False  # DomainBed HEAD: True, default and draws


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("algorithm", sorted(DOMAINBED))
def test_backbone_switches_match_domainbed(algorithm, dataset):
    for name, (default, _) in BACKBONE_TABLE.items():
        assert hr.get_hparams(algorithm, dataset, 0, 0)[name] == default
    for hparams_seed in range(1, 10):
        for trial_seed in range(3):
            ours = hr.get_hparams(algorithm, dataset, hparams_seed, trial_seed)
            seed = seed_hash(hparams_seed, trial_seed)
            for name, (_, fn) in BACKBONE_TABLE.items():
                assert ours[name] == fn(np.random.RandomState(seed_hash(seed, name))), (name, hparams_seed)
            assert ours["resnet50_augmix"] is OUR_RESNET50_AUGMIX
