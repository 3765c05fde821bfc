"""The device input pipeline against the CPU one (the reference), all on the CPU.

Both paths draw each sample's augmentation with ``draw_params`` from a generator seeded
by ``(loader seed, step, position)``; the CPU path applies it to a PIL image, the device
path to a batch of tensors. Where no interpolation and no 8-bit colour rounding is
involved the outputs are equal bit for bit; elsewhere they differ by PIL's uint8 rounding
after every operation (the device path stays in float), measured here in grey levels.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from domainbed.datasets import build_dataset
from domainbed.datasets.augment_params import AugmentSpec, draw_params
from domainbed.datasets.bad_images import BadImageWarning, load_rgb
from domainbed.datasets.batched_augment import adjust_hue, augment_batch, color_jitter
from domainbed.datasets.device_pipeline import decode_images, read_for_device, resolve_input_pipeline
from domainbed.datasets.images import ImageFolderDomains
from domainbed.datasets.transforms import IMAGENET_STD, TrainAugment, eval_transform
from domainbed.lib.seeding import sample_generator, sample_seed
from domainbed.training.input_pipeline import device_train_loader, select_train_loader
from domainbed.training.loaders import train_loader

CPU = torch.device("cpu")
# One grey level (1/255) after normalisation is at most 1 / (255 * min std).
LEVEL = 1.0 / (255 * min(IMAGENET_STD))


def smooth_image(rng: np.random.RandomState, width: int, height: int) -> np.ndarray:
    """A smooth random colour field (photo-like; white noise would exaggerate resize errors)."""
    coarse = Image.fromarray(rng.randint(0, 256, (6, 6, 3), dtype=np.uint8))
    return np.asarray(coarse.resize((width, height), Image.BICUBIC))


def jpeg_folder(root: Path, sizes: list[tuple[int, int]], domains: int = 2, classes: int = 2) -> Path:
    rng = np.random.RandomState(0)
    for d in range(domains):
        for c in range(classes):
            folder = root / f"dom{d}" / f"cls{c}"
            folder.mkdir(parents=True)
            for i, (w, h) in enumerate(sizes):
                Image.fromarray(smooth_image(rng, w, h)).save(folder / f"{i}.jpg", quality=95)
    return root


def levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| of normalised images, in grey levels (per-channel std undone)."""
    std = torch.tensor(IMAGENET_STD).view(-1, 3, 1, 1) if a.dim() == 4 else torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (a - b).abs() * std * 255


# ------------------------------------------------------------------ the parameter draw
@pytest.mark.parametrize("size", [(40, 30), (8, 60), (24, 24)])
def test_cpu_path_equals_torchvision_compose_for_the_same_global_seed(size):
    """The CPU augmentation is today's v2.Compose, output and random-number use alike."""
    image = Image.fromarray(smooth_image(np.random.RandomState(1), *size))
    augment = TrainAugment(16)
    reference = v2.Compose(augment.transforms)
    for seed in range(40):
        torch.manual_seed(seed)
        ours, after_ours = augment(image), torch.rand(1)
        torch.manual_seed(seed)
        theirs, after_theirs = reference(image), torch.rand(1)
        assert torch.equal(ours, theirs), seed
        assert torch.equal(after_ours, after_theirs)


def test_draw_params_central_crop_fallback_and_validation():
    # 50 x 8: every try at >= 70 % of the area needs a side > 8, so all ten fail and the
    # crop is the central one of the widest allowed aspect ratio: 8 x round(8 * 4/3) = 8 x 11.
    p = draw_params(8, 50, generator=sample_generator(3))
    assert (p.top, p.left, p.height, p.width) == (0, (50 - 11) // 2, 8, 11)
    q = draw_params(8, 50, generator=sample_generator(3))
    assert p == q  # a pure function of the seed
    assert sorted(p.order) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="scale"):
        AugmentSpec(scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="hue"):
        AugmentSpec(hue=(-0.6, 0.1))
    with pytest.raises(ValueError, match="image size"):
        draw_params(0, 5)


def test_both_paths_draw_the_same_parameters(tmp_path):
    """Batch t of the device loader carries the parameters drawn from (seed, t, k); the CPU
    loader's sample k is exactly the CPU augmentation of the same file with them."""
    ds = ImageFolderDomains(str(jpeg_folder(tmp_path, [(48, 36), (30, 44), (40, 40)])), [], {"image_size": 24})
    augment = ds.datasets[0].transform
    cpu = iter(train_loader(ds[0], 5, 11, 0, 0, False))
    device = iter(device_train_loader(ds[0], 5, 11, 0, 0, False, device=CPU, image_size=24).loader)
    for step in range(3):
        x, y = next(cpu)
        encoded = next(device)
        assert torch.equal(y, encoded.labels)
        for k, image in enumerate(encoded.images):
            drawn = draw_params(image.height, image.width, augment.spec, sample_generator(sample_seed(11, step, k)))
            assert image.params == drawn
            assert torch.equal(x[k], augment.apply(load_rgb(image.path), drawn))
    # The draw is per sample: the crops of one batch are not all the same.
    assert len({(p.top, p.left, p.height, p.width) for p in (im.params for im in encoded.images)}) > 1


def test_crop_flip_normalise_are_exact_without_resize(tmp_path):
    """Crop boxes of exactly S x S (no resize), flips, no colour operations: both paths give
    the same tensors bit for bit, at random crop offsets."""
    side, (w, h) = 16, (40, 30)
    ds = ImageFolderDomains(str(jpeg_folder(tmp_path, [(w, h)] * 3)), [], {"image_size": side})
    spec = AugmentSpec(scale=(side * side / (w * h),) * 2, ratio=(1.0, 1.0), brightness=None, contrast=None,
                       saturation=None, hue=None, grayscale_p=0.0)
    ds.datasets[0].transform = TrainAugment(side, spec)
    cpu = iter(train_loader(ds[0], 8, 5, 0, 0, False))
    device = iter(device_train_loader(ds[0], 8, 5, 0, 0, False, device=CPU, image_size=side))
    inner = iter(device_train_loader(ds[0], 8, 5, 0, 0, False, device=CPU, image_size=side).loader)
    params = []
    for _ in range(3):
        (xc, yc), (xd, yd) = next(cpu), next(device)
        assert torch.equal(xc, xd) and torch.equal(yc, yd)
        params += [im.params for im in next(inner).images]
    assert all((p.height, p.width) == (side, side) for p in params)
    assert {p.flip for p in params} == {True, False}
    assert len({(p.top, p.left) for p in params}) > 5


def test_full_augmentation_close_to_the_cpu_path():
    """DomainBed's augmentation, same decoded pixels, same parameters. Crop + antialiased
    resize: PIL and torch agree to 1 grey level. Brightness, contrast, saturation and
    grayscale: PIL rounds to uint8 after each, so up to ~2.5 levels. Hue: PIL shifts it by
    int(255 * factor) / 256 of the circle (up to 1/256 off the factor) and re-quantises H, S
    and V to 8 bits; 1/256 of the circle is up to 6 levels at full chroma, so a few pixels
    differ by ~16 levels, the mean by under 1. All together (each sample its own order):
    mean under 2.5 levels, 99th percentile under 10."""
    pil = Image.fromarray(smooth_image(np.random.RandomState(2), 80, 60))
    pixels = F.pil_to_tensor(pil)
    augment = TrainAugment(32)
    params = [draw_params(60, 80, augment.spec, sample_generator(s)) for s in range(24)]
    off = dict(brightness=None, contrast=None, saturation=None, hue=None, grayscale=False)

    def gap(modify) -> torch.Tensor:
        ps = [modify(p) for p in params]
        cpu = torch.stack([augment.apply(pil, p) for p in ps])
        return levels(cpu, augment_batch([pixels] * len(ps), ps, 32))

    assert gap(lambda p: replace(p, **off)).max() <= 1.01
    for op in ("brightness", "contrast", "saturation"):
        assert gap(lambda p: replace(p, **{**off, op: p.factor(("brightness", "contrast", "saturation").index(op))})).max() <= 2.5  # noqa: B023 -- called at once
    assert gap(lambda p: replace(p, **{**off, "grayscale": True})).max() <= 2.0
    hue = gap(lambda p: replace(p, **{**off, "hue": p.hue}))
    assert hue.mean() <= 1.0 and hue.max() <= 24
    everything = gap(lambda p: p)
    assert everything.mean() <= 2.5 and torch.quantile(everything.flatten()[::7], 0.99) <= 10
    # Evaluation (no parameters): resize + normalise, within 1 level of eval_transform.
    assert levels(eval_transform(32)(pil), augment_batch([pixels], None, 32)[0]).max() <= 1.01


def test_batched_colour_ops_match_torchvision_float_kernels():
    """Per-sample order and factors in one batch equal torchvision's kernels applied image
    by image in each sample's order (both in float)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 9, 7, generator=g)
    spec = AugmentSpec()
    params = [draw_params(9, 7, spec, sample_generator(s)) for s in range(6)]
    kernels = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]
    expected = []
    for image, p in zip(x, params):
        for op in p.order:
            image = kernels[op](image, p.factor(op))
        expected.append(image)
    torch.testing.assert_close(color_jitter(x.clone(), params), torch.stack(expected), atol=2e-5, rtol=0)


def test_hue_rotation_closed_form():
    red_green_blue = torch.eye(3).view(3, 3, 1, 1)  # rows: pure red, green, blue
    # +1/3 of the circle: red -> green -> blue -> red (the channels roll forward by one).
    third = torch.full((3,), 1 / 3)
    torch.testing.assert_close(adjust_hue(red_green_blue, third), red_green_blue.roll(1, dims=1), atol=1e-6, rtol=0)
    torch.testing.assert_close(adjust_hue(red_green_blue, -third), red_green_blue.roll(-1, dims=1), atol=1e-6, rtol=0)
    grey = torch.full((1, 3, 2, 2), 0.4)
    torch.testing.assert_close(adjust_hue(grey, torch.tensor([0.25])), grey)  # no chroma: unchanged


# ------------------------------------------------------------------ determinism
@pytest.mark.parametrize("pipeline", ["cpu", "device"])
def test_batches_depend_only_on_seed_and_step(tmp_path, pipeline):
    ds = ImageFolderDomains(str(jpeg_folder(tmp_path, [(40, 30), (30, 40)])), [], {"image_size": 16})
    make = train_loader if pipeline == "cpu" else (
        lambda *a: device_train_loader(*a, device=CPU, image_size=16))
    full = iter(make(ds[1], 4, 3, 0, 0, False))
    batches = [next(full) for _ in range(4)]
    resumed = iter(make(ds[1], 4, 3, 2, 0, False))  # start_step 2, as a resumed run
    for want in batches[2:]:
        got = next(resumed)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # A worker process draws the same augmentation as the main process.
    with_worker = iter(make(ds[1], 4, 3, 0, 1, False))
    for want in batches[:2]:
        assert torch.equal(next(with_worker)[0], want[0])
    other_seed = next(iter(make(ds[1], 4, 4, 0, 0, False)))
    assert not torch.equal(other_seed[0], batches[0][0])


# ------------------------------------------------------------------ decoding
def test_batched_decode_jpeg_equals_pil_decode(tmp_path):
    """decode_jpeg on a list (the device path's call, here on the CPU) gives PIL's pixels
    within 2 levels (both use libjpeg here: 0 in practice); grayscale JPEGs come out RGB;
    PNG and CMYK JPEG files are decoded by the worker and travel as pixels."""
    rng = np.random.RandomState(3)
    files = []
    for name, (w, h), mode in [("a.jpg", (64, 48), "RGB"), ("b.jpg", (33, 47), "RGB"), ("c.jpg", (20, 20), "L"),
                               ("d.png", (12, 10), "RGB"), ("e.jpg", (16, 16), "CMYK")]:
        Image.fromarray(smooth_image(rng, w, h)).convert(mode).save(tmp_path / name)
        files.append(str(tmp_path / name))
    images = [read_for_device(f) for f in files]
    assert [im.encoded for im in images] == [True, True, True, False, False]
    decoded = decode_images(images, CPU)
    for path, pixels, image in zip(files, decoded, images):
        reference = torch.from_numpy(np.array(load_rgb(path))).permute(2, 0, 1)
        assert pixels.shape == reference.shape == (3, image.height, image.width)
        assert (pixels.int() - reference.int()).abs().max() <= 2, path


def test_undecodable_files_are_replaced(tmp_path):
    ds_root = jpeg_folder(tmp_path / "data", [(20, 20)] * 2, domains=1, classes=1)
    good = ds_root / "dom0" / "cls0" / "0.jpg"
    (ds_root / "dom0" / "cls0" / "2.jpg").write_bytes(b"not an image at all")  # header unreadable
    ds = ImageFolderDomains(str(ds_root), [], {"image_size": 8})
    with pytest.warns(BadImageWarning, match="2.jpg"):
        x, _ = next(iter(device_train_loader(ds[0], 16, 0, 0, 0, False, device=CPU, image_size=8)))
    assert x.shape == (16, 3, 8, 8) and torch.isfinite(x).all()
    # Header fine, data cut: the batched decode fails, the file is replaced within the batch.
    noisy = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (64, 64, 3), dtype=np.uint8)).save(noisy, "JPEG")
    truncated = tmp_path / "t.jpg"
    truncated.write_bytes(noisy.getvalue()[: 2 * len(noisy.getvalue()) // 3])
    with pytest.warns(BadImageWarning, match="t.jpg"):
        pixels = decode_images([read_for_device(str(truncated)), read_for_device(str(good))], CPU)
    assert torch.equal(pixels[0], pixels[1]) and pixels[0].shape == (3, 20, 20)


# ------------------------------------------------------------------ selection and training
def test_input_pipeline_selection(tmp_path):
    jpegs = ImageFolderDomains(str(jpeg_folder(tmp_path / "j", [(8, 8)])), [], {"image_size": 8})
    cuda = torch.device("cuda")  # only its type is read: nothing runs on it
    assert resolve_input_pipeline({"input_pipeline": "auto"}, jpegs, cuda) == "device"
    assert resolve_input_pipeline({"input_pipeline": "auto"}, jpegs, CPU) == "cpu"
    assert resolve_input_pipeline({}, jpegs, cuda) == "device"
    assert resolve_input_pipeline({"input_pipeline": "cpu"}, jpegs, cuda) == "cpu"
    assert resolve_input_pipeline({"input_pipeline": "device"}, jpegs, CPU) == "device"
    pngs_root = tmp_path / "p" / "dom0" / "cls0"
    pngs_root.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(pngs_root / "x.png")
    pngs = ImageFolderDomains(str(tmp_path / "p"), [], {"image_size": 8})
    assert resolve_input_pipeline({"input_pipeline": "auto"}, pngs, cuda) == "cpu"
    debug = build_dataset("Debug28", None, [0], {})
    assert select_train_loader({"input_pipeline": "auto"}, debug, cuda)[0] == "cpu"
    with pytest.raises(ValueError, match="holds tensors"):
        resolve_input_pipeline({"input_pipeline": "device"}, debug, CPU)
    with pytest.raises(ValueError, match="one of auto, cpu, device"):
        resolve_input_pipeline({"input_pipeline": "gpu"}, jpegs, CPU)


@pytest.mark.slow
def test_train_script_runs_the_device_pipeline_on_cpu(tmp_path, capsys):
    from domainbed.scripts import train

    root = jpeg_folder(tmp_path / "data", [(40, 30), (30, 40)], domains=2)
    hparams = {"input_pipeline": "device", "backbone": "resnet18", "pretrained": False, "image_size": 16,
               "batch_size": 4, "eval_batch_size": 8}
    train.main(["--dataset", str(root), "--algorithm", "ERM", "--test_envs", "0", "--steps", "2",
                "--checkpoint_freq", "1", "--num_workers", "0", "--device", "cpu", "--skip_model_save",
                "--output_dir", str(tmp_path / "run"), "--hparams", json.dumps(hparams)])
    assert "Input pipeline: device" in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(np.isfinite(r["loss"]) for r in records)
