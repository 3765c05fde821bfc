from __future__ import annotations

import hashlib

import numpy as np
import pytest

from domainbed import hparams_registry as hr
from domainbed.algorithms import get_algorithm_class
from domainbed.datasets import MultipleDomainDataset, get_dataset_class
from domainbed.datasets.base import DigitSubsetDataset, SmallImageDataset
from domainbed.datasets.images import DomainNet
from domainbed.lib.hparam import HParam
from domainbed.lib.seeding import seed_hash


def test_seed_hash_is_md5_of_str_args():
    expected = int(hashlib.md5(str((3, "x")).encode()).hexdigest(), 16) % 2**31
    assert seed_hash(3, "x") == expected


def test_defaults_match_domainbed_values():
    h = hr.default_hparams("ERM", "PACS")
    assert (h["lr"], h["batch_size"], h["weight_decay"], h["resnet_dropout"]) == (5e-5, 32, 0.0, 0.0)
    h = hr.default_hparams("CORAL", "Debug28")
    assert (h["lr"], h["batch_size"], h["mmd_gamma"]) == (1e-3, 64, 1.0)


def test_random_draw_uses_per_name_seed():
    seed = seed_hash(3, 1)
    h = hr.random_hparams("CORAL", "PACS", seed)
    r = np.random.RandomState(seed_hash(seed, "lr"))
    assert h["lr"] == pytest.approx(10 ** r.uniform(-5, -3.5))
    r = np.random.RandomState(seed_hash(seed, "mmd_gamma"))
    assert h["mmd_gamma"] == pytest.approx(10 ** r.uniform(-1, 1))
    # The same draw for lr whatever the algorithm's other hparams are.
    assert hr.random_hparams("ERM", "PACS", seed)["lr"] == h["lr"]
    assert hr.get_hparams("ERM", "PACS", 3, 1)["lr"] == h["lr"]
    assert hr.get_hparams("ERM", "PACS", 0, 1)["lr"] == 5e-5


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match=r"unknown hparam\(s\) lr_typo.*Valid keys: .*batch_size.*lr"):
        hr.get_hparams("ERM", "PACS", 0, 0, {"lr_typo": 1})


def test_invalid_json_is_explained():
    with pytest.raises(ValueError, match="not valid JSON"):
        hr.parse_overrides("{lr: 1}")
    with pytest.raises(ValueError, match="JSON object"):
        hr.parse_overrides("[1, 2]")


def test_dataset_table_overrides_defaults():
    assert hr.default_hparams("ERM", "Debug224")["pretrained"] is False
    assert "ftlp_lambda" not in hr.default_hparams("ERM", "VLCS")  # only hparams the algorithm has


class _ToyDataset(MultipleDomainDataset):
    """A dataset defined here, never registered: it declares its own hparams."""

    HPARAMS = {
        "lr": HParam(0.25, hr.uniform(0.1, 0.3)),
        "toy_width": HParam(7, hr.choice(3, 7, 11), "a hparam only this dataset has"),
    }
    HPARAM_DEFAULTS = {"mmd_gamma": 4.0, "ftlp_lambda": 9.0}
    HPARAMS_FOLLOW = {"lr_d": "lr"}


def test_a_new_dataset_class_gets_its_own_hparams_merged():
    h = hr.default_hparams("CORAL", _ToyDataset)
    assert (h["lr"], h["toy_width"], h["batch_size"], h["backbone"]) == (0.25, 7, 32, "resnet50")
    assert h["mmd_gamma"] == 4.0 and "ftlp_lambda" not in h  # defaults reach only hparams CORAL has
    seed = seed_hash(4, 2)
    drawn = hr.random_hparams("CORAL", _ToyDataset, seed)
    assert drawn["lr"] == pytest.approx(np.random.RandomState(seed_hash(seed, "lr")).uniform(0.1, 0.3))
    assert drawn["toy_width"] == (3, 7, 11)[np.random.RandomState(seed_hash(seed, "toy_width")).choice(3)]
    # The default is the dataset's, the distribution stays CORAL's.
    assert drawn["mmd_gamma"] == pytest.approx(10 ** np.random.RandomState(seed_hash(seed, "mmd_gamma")).uniform(-1, 1))
    # HPARAMS_FOLLOW: DANN's discriminator lr takes the dataset's lr, its generator lr does not.
    dann = hr.default_hparams("DANN", _ToyDataset)
    assert dann["lr_d"] == 0.25 and dann["lr_g"] == 5e-5
    # It takes lr's distribution, drawn from its own seed.
    lr_d = np.random.RandomState(seed_hash(seed, "lr_d")).uniform(0.1, 0.3)
    assert hr.random_hparams("DANN", _ToyDataset, seed)["lr_d"] == pytest.approx(lr_d)
    # The algorithm's own declaration wins over the dataset's (ARM fixes its batch size).
    assert hr.default_hparams("ARM", type("Toy", (_ToyDataset,), {"HPARAMS": {"batch_size": HParam(99)}}))["batch_size"] == 8


def test_a_subclass_redeclaring_a_value_keeps_the_help():
    specs = _ToyDataset.hparam_specs()
    assert specs["lr"].help == MultipleDomainDataset.HPARAMS["lr"].help != ""
    assert specs["toy_width"].help == "a hparam only this dataset has"


def test_dataset_defaults_and_distributions_are_read_from_the_dataset_class(monkeypatch):
    assert not any(hasattr(hr, name) for name in ("DATASET_DEFAULTS", "DATASET_SPECS", "CALIBRATED_FAMILIES"))
    assert "HPARAM_DEFAULTS" not in vars(DomainNet) and hr.default_hparams("ERM_FTLP", "DomainNet")["ftlp_lambda"] == 0.1
    monkeypatch.setattr(DomainNet, "HPARAM_DEFAULTS", {"ftlp_lambda": 0.7})
    monkeypatch.setattr(DomainNet, "HPARAMS", {"batch_size": HParam(12, hr.pow2_int(2, 3))})
    assert hr.default_hparams("ERM_FTLP", "DomainNet")["ftlp_lambda"] == 0.7
    assert hr.default_hparams("ERM", "DomainNet")["batch_size"] == 12
    assert {hr.get_hparams("ERM", "DomainNet", s, 0)["batch_size"] for s in range(1, 20)} <= {4, 5, 6, 7}
    assert hr.default_hparams("ERM_FTLP", "OfficeHome")["ftlp_lambda"] == 0.1  # another class, untouched


def test_families_are_declared_on_their_base_classes(tmp_path):
    assert issubclass(get_dataset_class("Debug28"), SmallImageDataset)
    assert all(issubclass(get_dataset_class(d), DigitSubsetDataset) for d in ("RotatedMNISTSubset", "OfflineDigits"))
    assert hr.default_hparams("ERM", "RotatedMNIST")["backbone"] == SmallImageDataset.HPARAMS["backbone"].default
    subset = hr.default_hparams("DANN", "ColoredMNISTSubset")
    assert (subset["backbone"], subset["image_size"], subset["lr"], subset["lr_g"]) == ("efficientnet_lite0", 32, 1e-3, 1e-3)
    # A folder dataset is the image family, with no dataset-specific default: ERM_FTLP keeps its own lambda.
    (tmp_path / "domain" / "class").mkdir(parents=True)
    folder = hr.default_hparams("ERM_FTLP", str(tmp_path))
    assert (folder["backbone"], folder["lr"], folder["batch_size"]) == ("resnet50", 5e-5, 32)
    assert folder["ftlp_lambda"] == get_algorithm_class("ERM_FTLP").hparam_specs()["ftlp_lambda"].otherwise.default == 0.1


def test_a_method_declares_its_per_dataset_defaults_on_its_own_hparam():
    datasets = ("PACS", "VLCS", "OfficeHome", "TerraIncognita", "DomainNet", "Debug28")
    # MIRO's published lambda, for MIRO and every FT-LP variant; SWAD's tolerance on VLCS.
    for algorithm in ("MIRO", "ERM_FTLP", "CORAL_FTLP", "SWAD_FTLP"):
        assert [hr.default_hparams(algorithm, d)["ftlp_lambda"] for d in datasets] == [0.01, 0.01, 0.1, 0.1, 0.1, 0.1]
    for algorithm in ("SWAD", "SWAD_FTLP"):
        assert [hr.default_hparams(algorithm, d)["swad_tolerance_ratio"] for d in datasets] == [0.3, 0.2, 0.3, 0.3, 0.3, 0.3]
    # Only the default changes: the distribution (so every draw) and the help stay.
    seed = seed_hash(5, 0)
    assert hr.random_hparams("MIRO", "PACS", seed)["ftlp_lambda"] == hr.random_hparams("MIRO", "OfficeHome", seed)["ftlp_lambda"]
    spec = HParam(0.3, hr.uniform(0, 1), "a ratio").on_datasets(VLCS=0.2)
    assert spec.resolve("image", "VLCS") == HParam(0.2, spec.otherwise.sample, "a ratio")
    assert spec.resolve("image", "PACS") is spec.otherwise
    # No dataset declares a method's value.
    from domainbed.datasets import dataset_names

    assert not any({"ftlp_lambda", "swad_tolerance_ratio"} & set(get_dataset_class(d).hparam_defaults())
                   for d in dataset_names())


def test_categorical_hparams_refuse_values_outside_their_choices_at_start_up():
    """Whatever sets the value (default, draw or --hparams), get_hparams checks it."""
    for name, bad in (("ftlp_prior_var", "learnt"), ("ftlp_layers", "everything"), ("ftlp_posterior", "mean"),
                      ("ftlp_control", "random"), ("precision", "fp8")):
        with pytest.raises(ValueError, match=f"hparam {name} must be one of"):
            hr.get_hparams("ERM_FTLP", "PACS", overrides={name: bad})
    with pytest.raises(ValueError, match="hparam swad_rule must be one of official, paper"):
        hr.get_hparams("SWAD", "PACS", overrides={"swad_rule": "ours"})
    with pytest.raises(ValueError, match="hparam miro_var_init must be one of published, prior"):
        hr.get_hparams("MIRO", "PACS", overrides={"miro_var_init": "value"})
    # Declared although random search never draws it (it needs the point posterior).
    assert hr.get_hparams("ERM_FTLP", "PACS", overrides={"ftlp_prior_var": "learned"})["ftlp_prior_var"] == "learned"
    assert "learned" in hr.hparam_specs("ERM_FTLP", "PACS")["ftlp_prior_var"].choices
    # A numeric choice() is a search grid, not a list of allowed values.
    assert hr.get_hparams("ERM", "PACS", overrides={"resnet_dropout": 0.2})["resnet_dropout"] == 0.2


def test_defaults_and_draws_of_categorical_hparams_are_among_their_choices():
    from domainbed.algorithms.registry import algorithm_names

    for algorithm in algorithm_names():
        for dataset in ("PACS", "Debug28"):
            specs = hr.hparam_specs(algorithm, dataset)
            for hparams_seed in (0, 1, 2, 3):
                h = hr.get_hparams(algorithm, dataset, hparams_seed, 0)  # raises if one is outside
                assert all(h[n] in s.choices for n, s in specs.items() if s.choices)
