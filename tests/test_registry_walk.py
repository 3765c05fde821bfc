"""Every registered algorithm trains on Debug28: generated from the registry, as timm does for models."""

from __future__ import annotations

import pytest
import torch

from domainbed import hparams_registry
from domainbed.algorithms import algorithm_names, get_algorithm_class

# DomainBed's default SAND-mask threshold tau = 1.0 masks every component (no step at all);
# its random search draws tau < 1, which is what this walk needs to see a parameter move.
INERT_DEFAULTS = {"SANDMask": {"tau": 0.5}}


@pytest.mark.parametrize("name", algorithm_names())
def test_algorithm_updates_and_predicts(name, debug28):
    torch.manual_seed(0)
    hparams = hparams_registry.default_hparams(name, "Debug28")
    hparams["batch_size"] = 8
    hparams.update(INERT_DEFAULTS.get(name, {}))
    alg = get_algorithm_class(name)(debug28.input_shape, debug28.num_classes, 2, hparams).setup("cpu")
    before = {k: v.detach().clone() for k, v in alg.named_parameters()}
    batches = [(debug28[i].x[:8], debug28[i].y[:8]) for i in (1, 2)]
    for _ in range(3):
        logs = alg.update(batches)
        assert "loss" in logs
        assert all(torch.isfinite(v) for v in logs.values()), logs
    changed = [k for k, v in alg.named_parameters() if not torch.equal(v, before[k])]
    assert changed, "no parameter moved in 3 updates"
    logits = alg.eval_network().predict(debug28[0].x[:5])
    assert logits.shape == (5, debug28.num_classes)


def test_registry_rejects_duplicates_and_lists_names():
    from domainbed.algorithms import register_algorithm

    with pytest.raises(ValueError, match="registered twice"):
        register_algorithm(type("ERM", (get_algorithm_class("ERM"),), {}))
    with pytest.raises(ValueError, match="valid algorithms: .*CORAL.*ERM"):
        get_algorithm_class("ERMM")
