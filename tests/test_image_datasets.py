"""Image-folder datasets on tiny trees of real PNG/JPEG files made on the fly."""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from domainbed.datasets import DatasetError, _folder_domain, dataset_names, get_dataset_class
from domainbed.datasets.bad_images import BadImageWarning, bad_image_count
from domainbed.datasets.images import (
    PACS,
    VLCS,
    DomainNet,
    ImageFolderDomains,
    OfficeHome,
    TerraIncognita,
)
from domainbed.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform

SMALL = {"image_size": 16}


def write_image(path: Path, color: tuple[int, int, int] = (10, 20, 30), size: int = 8) -> Path:
    """A solid-colour image; the format follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return path


def write_gradient(path: Path, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 255, size * size * 3).astype(np.uint8).reshape(size, size, 3)
    Image.fromarray(ramp).save(path)
    return path


def truncated_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.RandomState(0).randint(0, 255, (16, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def expected_normalized(color: tuple[int, int, int]) -> torch.Tensor:
    """Per-channel value of a solid-colour image after ToTensor + ImageNet Normalize."""
    return torch.tensor([(c / 255.0 - m) / s for c, m, s in zip(color, IMAGENET_MEAN, IMAGENET_STD)])


def test_domains_and_shared_class_indices(tmp_path: Path) -> None:
    # d2 has no "dog"; "zebra" only exists in d2: indices must still agree across domains.
    files = {
        "d1/cat/a.png": "cat",
        "d1/dog/b.jpg": "dog",
        "d1/dog/c.png": "dog",
        "d2/cat/d.png": "cat",
        "d2/zebra/e.jpeg": "zebra",
    }
    for rel in files:
        write_image(tmp_path / rel)
    (tmp_path / ".cache" / "x").mkdir(parents=True)  # hidden domain folder: ignored
    write_image(tmp_path / "d1" / ".hidden" / "f.png")  # hidden class folder: ignored
    (tmp_path / "notes.txt").write_text("a file at the root is not a domain")

    ds = ImageFolderDomains(str(tmp_path), test_envs=[], hparams=SMALL)

    union = ["cat", "dog", "zebra"]
    assert ds.environments == ["d1", "d2"]
    assert len(ds) == 2
    assert ds.num_classes == 3
    assert ds.classes == union
    got = {}
    for domain in ds.datasets:
        for path, label in domain.samples:
            got[Path(path).relative_to(tmp_path).as_posix()] = label
    assert got == {rel: union.index(name) for rel, name in files.items()}
    # The label returned by __getitem__ is the same one.
    assert [int(ds[1][i][1]) for i in range(len(ds[1]))] == [0, 2]


def test_input_shape_and_normalized_values(tmp_path: Path) -> None:
    color = (200, 100, 50)
    write_image(tmp_path / "a" / "k" / "x.png", color, size=8)
    write_image(tmp_path / "b" / "k" / "y.png", color, size=8)
    ds = ImageFolderDomains(str(tmp_path), test_envs=[0, 1], hparams={"image_size": 32})
    assert ds.input_shape == (3, 32, 32)
    x, y = ds[0][0]
    assert type(x) is torch.Tensor and x.dtype == torch.float32
    assert x.shape == (3, 32, 32)
    assert y == 0
    # A solid image stays solid after resizing, so every pixel equals the normalised colour.
    expected = expected_normalized(color).view(3, 1, 1).expand(3, 32, 32)
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)


def _has_augmentation(transform) -> bool:
    return any(isinstance(t, v2.RandomResizedCrop) for t in transform.transforms)


def test_train_domains_augmented_test_domains_not(tmp_path: Path) -> None:
    for d in ("a", "b", "c"):
        write_gradient(tmp_path / d / "k" / "x.png", size=24)
    ds = ImageFolderDomains(str(tmp_path), test_envs=[1], hparams=SMALL)
    assert [_has_augmentation(d.transform) for d in ds.datasets] == [True, False, True]

    torch.manual_seed(0)
    train_draws = [ds[0][0][0] for _ in range(6)]
    assert any(not torch.equal(train_draws[0], other) for other in train_draws[1:])
    test_draws = [ds[1][0][0] for _ in range(3)]
    assert all(torch.equal(test_draws[0], other) for other in test_draws[1:])

    no_aug = ImageFolderDomains(str(tmp_path), test_envs=[1], hparams={**SMALL, "data_augmentation": False})
    assert [_has_augmentation(d.transform) for d in no_aug.datasets] == [False, False, False]
    torch.testing.assert_close(no_aug[0][0][0], no_aug[0][0][0])


def test_transform_functions_shapes_and_bad_size() -> None:
    image = Image.new("RGB", (20, 10), (1, 2, 3))
    assert train_transform(12)(image).shape == (3, 12, 12)
    assert eval_transform(12)(image).shape == (3, 12, 12)
    with pytest.raises(ValueError, match="image_size"):
        eval_transform(0)


def test_missing_folder_messages(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match=r"<domain>/<class>/<image>") as info:
        ImageFolderDomains(str(missing), [], SMALL)
    assert str(missing) in str(info.value)

    with pytest.raises(DatasetError) as info:
        PACS(str(tmp_path), [0], SMALL)
    message = str(info.value)
    assert str(tmp_path / "PACS") in message
    assert f"python -m domainbed.scripts.download --data_dir {tmp_path} --dataset PACS" in message


def test_empty_root_and_empty_domain(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no domain sub-folders"):
        ImageFolderDomains(str(tmp_path), [], SMALL)

    write_image(tmp_path / "full" / "k" / "x.png")
    (tmp_path / "hollow" / "k").mkdir(parents=True)
    with pytest.raises(DatasetError, match="has no images") as info:
        ImageFolderDomains(str(tmp_path), [], SMALL)
    assert str(tmp_path / "hollow") in str(info.value)


def test_zero_byte_and_non_image_files_skipped(tmp_path: Path) -> None:
    write_image(tmp_path / "a" / "k" / "good.png")
    write_image(tmp_path / "b" / "k" / "good.jpg")
    empty = tmp_path / "a" / "k" / "empty.png"
    empty.touch()
    text = tmp_path / "b" / "k" / "readme.txt"
    text.write_text("not an image")
    (tmp_path / "b" / "k" / ".DS_Store").write_bytes(b"junk")  # hidden: ignored silently

    with pytest.warns(UserWarning, match="skipped 2 files"):
        ds = ImageFolderDomains(str(tmp_path), [], SMALL)
    assert sorted(ds.skipped_files) == sorted([str(empty), str(text)])
    assert [len(d) for d in ds.datasets] == [1, 1]


def test_corrupt_image_replaced_by_next_sample(tmp_path: Path) -> None:
    red, blue, green = (250, 0, 0), (0, 0, 250), (0, 250, 0)
    write_image(tmp_path / "d" / "cat" / "a.png", red)
    (tmp_path / "d" / "cat" / "b.jpg").write_bytes(np.random.RandomState(1).bytes(300))
    write_image(tmp_path / "d" / "cat" / "c.png", blue)
    write_image(tmp_path / "d" / "dog" / "d.png", green)
    truncated_jpeg(tmp_path / "d" / "dog" / "e.jpg")
    domain = ImageFolderDomains(str(tmp_path), [0], SMALL)[0]
    names = [Path(p).name for p, _ in domain.samples]
    assert names == ["a.png", "b.jpg", "c.png", "d.png", "e.jpg"]
    before = bad_image_count()

    with pytest.warns(BadImageWarning, match="b.jpg"):
        x, y = domain[1]
    assert y == 0  # the label of the replacement c.png (cat)
    torch.testing.assert_close(x[:, 0, 0], expected_normalized(blue), atol=1e-5, rtol=0)
    assert domain.bad_images == 1
    assert bad_image_count() == before + 1

    # The same bad file again: no new warning, no new count, same replacement.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x_again, _ = domain[1]
    assert not [w for w in caught if issubclass(w.category, BadImageWarning)]
    torch.testing.assert_close(x_again, x)
    assert domain.bad_images == 1

    # A truncated JPEG at the end wraps around to the first sample (red cat).
    with pytest.warns(BadImageWarning, match="e.jpg"):
        x, y = domain[4]
    assert y == 0
    torch.testing.assert_close(x[:, 0, 0], expected_normalized(red), atol=1e-5, rtol=0)
    assert domain.bad_images == 2
    assert bad_image_count() == before + 2


def test_too_many_consecutive_bad_images_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(4):
        (tmp_path / "d" / "k" / f"bad{i}.jpg").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / "k" / f"bad{i}.jpg").write_bytes(b"not a jpeg at all")
    write_image(tmp_path / "d" / "k" / "good.png")
    monkeypatch.setattr(_folder_domain, "MAX_CONSECUTIVE_BAD", 2)
    domain = ImageFolderDomains(str(tmp_path), [0], SMALL)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        with pytest.raises(DatasetError, match="3 images in a row failed to decode"):
            domain[0]
        # From index 3, bad3 is followed by good.png: within the limit, so it succeeds.
        _, y = domain[3]
    assert y == 0


def test_domain_with_only_undecodable_files_raises(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / "d" / "k").mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / "k" / f"bad{i}.png").write_bytes(b"\x89PNG garbage")
    domain = ImageFolderDomains(str(tmp_path), [0], SMALL)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        with pytest.raises(DatasetError, match=f"in domain {tmp_path / 'd'}"):
            domain[1]
    assert domain.bad_images == 3


def _pacs_tree(data_dir: Path, domains: list[str]) -> None:
    for d in domains:
        write_image(data_dir / "PACS" / d / "dog" / "x.png")
        write_image(data_dir / "PACS" / d / "horse" / "y.jpg")


def test_named_dataset_from_data_dir(tmp_path: Path) -> None:
    folders = ["art_painting", "cartoon", "photo", "sketch"]
    _pacs_tree(tmp_path, folders)
    ds = PACS(str(tmp_path), [0], SMALL)
    assert ds.environments == ["A", "C", "P", "S"]
    assert ds.domain_folders == folders
    assert len(ds) == 4 and ds.num_classes == 2
    assert [_has_augmentation(d.transform) for d in ds.datasets] == [False, True, True, True]


def test_named_dataset_with_wrong_domain_count(tmp_path: Path) -> None:
    _pacs_tree(tmp_path, ["art_painting", "cartoon", "photo"])
    with pytest.raises(DatasetError, match="should have 4 domain folders") as info:
        PACS(str(tmp_path), [0], SMALL)
    assert "has 3: art_painting, cartoon, photo" in str(info.value)


def test_test_envs_out_of_range(tmp_path: Path) -> None:
    write_image(tmp_path / "a" / "k" / "x.png")
    with pytest.raises(DatasetError, match="out of range"):
        ImageFolderDomains(str(tmp_path), [1], SMALL)


def test_registry_and_class_attributes() -> None:
    expected = {
        "VLCS": (VLCS, 4, 5001, 300),
        "PACS": (PACS, 4, 5001, 300),
        "OfficeHome": (OfficeHome, 4, 5001, 300),
        "TerraIncognita": (TerraIncognita, 4, 5001, 300),
        "DomainNet": (DomainNet, 6, 5001, 1000),
    }
    for name, (cls, n_envs, steps, freq) in expected.items():
        assert get_dataset_class(name) is cls
        assert (len(cls.ENVIRONMENTS), cls.N_STEPS, cls.CHECKPOINT_FREQ) == (n_envs, steps, freq)
        assert cls.N_WORKERS == 4 and cls.HPARAM_FAMILY == "image"
    assert "ImageFolderDomains" not in dataset_names()
    subfolders = {cls.__name__: cls.SUBFOLDER for cls, *_ in expected.values()}
    assert subfolders == {
        "VLCS": "VLCS",
        "PACS": "PACS",
        "OfficeHome": "office_home",
        "TerraIncognita": "terra_incognita",
        "DomainNet": "domain_net",
    }


def test_domain_pickles_for_loader_workers(tmp_path: Path) -> None:
    # Spawned DataLoader workers receive the domain by pickle.
    write_image(tmp_path / "a" / "k" / "x.png", (5, 6, 7))
    domain = ImageFolderDomains(str(tmp_path), [], SMALL)[0]
    clone = pickle.loads(pickle.dumps(domain))
    assert clone.samples == domain.samples
    assert clone[0][0].shape == (3, 16, 16)


def test_bad_images_met_in_loader_workers_are_counted_in_the_main_process(tmp_path: Path) -> None:
    write_image(tmp_path / "d" / "cat" / "a.png", (250, 0, 0))
    (tmp_path / "d" / "cat" / "b.jpg").write_bytes(np.random.RandomState(2).bytes(300))
    domain = ImageFolderDomains(str(tmp_path), [0], SMALL)[0]
    before = bad_image_count()
    loader = torch.utils.data.DataLoader(domain, batch_size=2, num_workers=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (x, y), = list(loader)
    assert x.shape[0] == 2 and bad_image_count() == before + 1
