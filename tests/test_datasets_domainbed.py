"""DomainBed's remaining datasets (SVIRO, Spawrious, WILDS) on tiny fixture folders in their
real on-disk layouts, and ColoredMNIST's label convention.

Expected file lists are written out by hand from DomainBed's and WILDS's definitions, not
computed with the code under test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from domainbed.datasets import build_dataset, get_dataset_class
from domainbed.datasets.base import DatasetError
from domainbed.datasets.mnist import color
from domainbed.datasets.spawrious import SpawriousM2M_hard, SpawriousO2O_easy
from domainbed.datasets.wilds_datasets import FMOW_CATEGORIES

from fixtures_datasets import (
    CAMELYON_ROWS,
    FMOW_REGION,
    FMOW_ROWS,
    camelyon_files,
    camelyon_path,
    fmow_files,
    png_bytes,
    spawrious_files,
    write_files,
)

SMALL = {"image_size": 16}


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# ----------------------------------------------------------------------------- ColoredMNIST

def test_colored_mnist_label_is_digit_below_five_before_noise():
    n = 4000
    digits = torch.arange(n) % 10
    images = torch.full((n, 2, 2), 200, dtype=torch.uint8)
    x, y = color(images, digits, flip_p=0.0, g=torch.Generator().manual_seed(1))
    below = (digits < 5).long()
    agree = (y == below).float().mean().item()
    # 25% label noise: the label agrees with "digit < 5" about 75% of the time, never ~25%.
    assert 0.72 < agree < 0.78
    # With no colour flips the kept channel is the label: colour 1 keeps channel 1.
    kept = (x.flatten(2).sum(-1) > 0).long()
    assert torch.equal(kept.sum(1), torch.ones(n, dtype=torch.long))
    assert torch.equal(kept[:, 1], y)
    _, y_flipped = color(images, digits, flip_p=1.0, g=torch.Generator().manual_seed(1))
    x_flipped, _ = color(images, digits, flip_p=1.0, g=torch.Generator().manual_seed(1))
    assert torch.equal(y_flipped, y)  # same noise draw
    assert torch.equal((x_flipped.flatten(2).sum(-1) > 0).long()[:, 0], y)  # colour now opposes the label


# ----------------------------------------------------------------------------- SVIRO

SVIRO_CARS = ["aclass", "escape", "hilux", "i3", "lexus", "tesla", "tiguan", "tucson", "x5", "zoe"]


def test_sviro_reads_ten_car_domains(tmp_path):
    data = png_bytes()
    for car in SVIRO_CARS:
        for cls in ("empty", "person"):
            write(tmp_path / "sviro" / car / cls / f"{car}_{cls}.png", data)
    ds = build_dataset("SVIRO", str(tmp_path), [3], SMALL)
    assert ds.environments == SVIRO_CARS and len(ds) == 10
    assert ds.num_classes == 2 and get_dataset_class("SVIRO").CHECKPOINT_FREQ == 300
    x, y = ds[3][1]
    assert x.shape == (3, 16, 16) and y == 1
    partial = tmp_path / "partial"
    for car in SVIRO_CARS[:3]:
        write(partial / "sviro" / car / "empty" / "a.png", data)
    with pytest.raises(DatasetError, match="should have 10 domain folders"):
        build_dataset("SVIRO", str(partial), [0], SMALL)
    with pytest.raises(DatasetError, match="--dataset SVIRO"):
        build_dataset("SVIRO", str(tmp_path / "nothing"), [0], SMALL)


# ----------------------------------------------------------------------------- Spawrious

BREEDS = ["bulldog", "corgi", "dachshund", "labrador"]


@pytest.fixture(scope="module")
def spawrious_root(tmp_path_factory) -> Path:
    """``spawrious224/{0,1}/<location>/<breed>/img00..img11.png`` (plus a non-image file)."""
    root = tmp_path_factory.mktemp("spaw")
    write_files(root / "spawrious224", spawrious_files(12))
    return root


def _rel(domain, root: Path) -> list[tuple[str, int]]:
    base = root / "spawrious224"
    return [(str(Path(p).relative_to(base).parent), y) for p, y in domain.samples]


def _expected(parts: list[tuple[str, str, str, int]]) -> list[tuple[str, int]]:
    """(folder, location, breed, count) -> the (folder/location/breed, label) list."""
    return [(f"{f}/{loc}/{b}", BREEDS.index(b)) for f, loc, b, count in parts for _ in range(count)]


def test_spawrious_o2o_easy_domains_follow_domainbed(spawrious_root):
    # DomainBed's O2O: 3,168 images per breed, 97% / 87% on the breed's background in group
    # folders 0 / 1, the rest on the filler (beach). Shrunk to 10 per breed here: 9 / 8 and 1 / 2.
    small = type("SmallO2O", (SpawriousO2O_easy,), {"TOTAL": 10})
    ds = small(str(spawrious_root), [0], SMALL)
    assert ds.environments == ["Test", "SC_group_1", "SC_group_2"] and ds.num_classes == 4
    test = [("0", "dirt", "bulldog", 12), ("0", "snow", "dachshund", 12), ("0", "desert", "labrador", 12), ("0", "jungle", "corgi", 12),
            ("1", "dirt", "bulldog", 12), ("1", "snow", "dachshund", 12), ("1", "desert", "labrador", 12), ("1", "jungle", "corgi", 12)]
    group1 = [("0", "desert", "bulldog", 9), ("0", "jungle", "dachshund", 9), ("0", "dirt", "labrador", 9), ("0", "snow", "corgi", 9),
              ("0", "beach", "bulldog", 1), ("0", "beach", "dachshund", 1), ("0", "beach", "labrador", 1), ("0", "beach", "corgi", 1)]
    group2 = [("1", "desert", "bulldog", 8), ("1", "jungle", "dachshund", 8), ("1", "dirt", "labrador", 8), ("1", "snow", "corgi", 8),
              ("1", "beach", "bulldog", 2), ("1", "beach", "dachshund", 2), ("1", "beach", "labrador", 2), ("1", "beach", "corgi", 2)]
    for domain, parts in zip(ds.datasets, (test, group1, group2)):
        assert _rel(domain, spawrious_root) == _expected(parts)
    # The caps take the first files in sorted order, whatever the file system lists first.
    assert [Path(p).name for p, _ in ds[2].samples[:8]] == [f"img{k:02d}.png" for k in range(8)]
    assert ds[1].targets == [y for _, y in ds[1].samples]
    x, y = ds[0][0]
    assert x.shape == (3, 16, 16) and y == BREEDS.index("bulldog")


def test_spawrious_m2m_hard_domains_follow_domainbed(spawrious_root):
    # DomainBed's M2M: every breed capped at 3,168 (10 here), all from folder 0; in group 2 the
    # two breeds of a pair swap backgrounds; the test domain holds both pairings, uncapped.
    small = type("SmallM2M", (SpawriousM2M_hard,), {"TOTAL": 10})
    ds = small(str(spawrious_root / "spawrious224"), [0], SMALL)  # DomainBed-style data dir
    group1 = [("0", "dirt", "bulldog", 10), ("0", "jungle", "dachshund", 10), ("0", "snow", "labrador", 10), ("0", "beach", "corgi", 10)]
    group2 = [("0", "jungle", "bulldog", 10), ("0", "dirt", "dachshund", 10), ("0", "beach", "labrador", 10), ("0", "snow", "corgi", 10)]
    test = [("0", "snow", "bulldog", 12), ("0", "beach", "dachshund", 12), ("0", "dirt", "labrador", 12), ("0", "jungle", "corgi", 12),
            ("0", "beach", "bulldog", 12), ("0", "snow", "dachshund", 12), ("0", "jungle", "labrador", 12), ("0", "dirt", "corgi", 12)]
    for domain, parts in zip(ds.datasets, (test, group1, group2)):
        assert _rel(domain, spawrious_root) == _expected(parts)


def test_spawrious_full_size_caps_and_missing_data(spawrious_root, tmp_path):
    # At the real cap (3,168) the 12 fixture images per folder are all taken.
    ds = build_dataset("SpawriousO2O_hard", str(spawrious_root), [0], SMALL)
    assert [len(d) for d in ds.datasets] == [8 * 12, 4 * 12 + 4 * 12, 4 * 12 + 4 * 12]
    with pytest.raises(DatasetError, match="--dataset SpawriousM2M_easy"):
        build_dataset("SpawriousM2M_easy", str(tmp_path), [0], SMALL)
    (tmp_path / "spawrious224" / "0").mkdir(parents=True)
    with pytest.raises(DatasetError, match="download is incomplete"):
        build_dataset("SpawriousM2M_easy", str(tmp_path), [0], SMALL)


# ----------------------------------------------------------------------------- WILDS

@pytest.fixture(scope="module")
def camelyon_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wilds")
    write_files(root / "camelyon17_v1.0", camelyon_files())
    return root


def test_wilds_camelyon_reads_the_wilds_layout(camelyon_root):
    ds = build_dataset("WILDSCamelyon", str(camelyon_root), [2], SMALL)
    assert ds.environments == [f"hospital_{i}" for i in range(5)] and ds.num_classes == 2
    folder = camelyon_root / "camelyon17_v1.0"
    for hospital, domain in enumerate(ds.datasets):
        rows = [r for r in CAMELYON_ROWS if r[5] == hospital]
        assert domain.samples == [(str(folder / camelyon_path(*r[:4])), r[4]) for r in rows]
    x, y = ds[0][0]
    assert x.shape == (3, 16, 16) and y == 1
    with pytest.raises(DatasetError, match="--dataset WILDSCamelyon"):
        build_dataset("WILDSCamelyon", str(camelyon_root / "nope"), [0], SMALL)


@pytest.fixture(scope="module")
def fmow_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fmow")
    write_files(root / "fmow_v1.1", fmow_files())
    return root


def test_wilds_fmow_reads_the_wilds_layout(fmow_root):
    ds = build_dataset("WILDSFMoW", str(fmow_root), [0], SMALL)
    assert ds.environments == [f"region_{i}" for i in range(6)] and ds.num_classes == 62
    images = fmow_root / "fmow_v1.1" / "images"
    for region, domain in enumerate(ds.datasets):
        expected = [
            (str(images / f"rgb_img_{i}.png"), FMOW_CATEGORIES.index(c))
            for i, (s, c, cc) in enumerate(FMOW_ROWS)
            if s != "seq" and FMOW_REGION[cc] == region
        ]
        assert domain.samples == expected, region
    assert len(FMOW_CATEGORIES) == 62 and list(FMOW_CATEGORIES) == sorted(FMOW_CATEGORIES)
    x, y = ds[1][0]
    assert x.shape == (3, 16, 16) and y == FMOW_CATEGORIES.index("airport")


def test_wilds_layout_agrees_with_the_wilds_package(camelyon_root, fmow_root):
    """Cross-check against the `wilds` package itself (the optional extra) on the same files."""
    pytest.importorskip("wilds")
    from wilds.datasets.camelyon17_dataset import Camelyon17Dataset
    from wilds.datasets.fmow_dataset import FMoWDataset

    for name, root, ref_cls, field in (
        ("WILDSCamelyon", camelyon_root, Camelyon17Dataset, "hospital"),
        ("WILDSFMoW", fmow_root, FMoWDataset, "region"),
    ):
        ours = build_dataset(name, str(root), [], SMALL)
        ref = ref_cls(root_dir=str(root), download=False)
        column = ref.metadata_fields.index(field)
        values = sorted(set(ref.metadata_array[:, column].tolist()))
        assert len(values) == len(ours.datasets)
        for value, domain in zip(values, ours.datasets):
            idx = torch.where(ref.metadata_array[:, column] == value)[0].tolist()
            assert [int(ref.y_array[i]) for i in idx] == domain.targets, (name, value)
            for i, (path, _) in zip(idx, domain.samples):
                with Image.open(path) as mine:
                    assert mine.convert("RGB").tobytes() == ref.get_input(i).tobytes(), (name, value, i)
