from __future__ import annotations

import hashlib

import numpy as np
import pytest

from domainbed import hparams_registry as hr
from domainbed.lib.misc import seed_hash


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
