"""CUDA checks (issues 5 and 13). Collected everywhere, run only where a CUDA GPU is visible:

    python -m pytest -q -m cuda tests/test_cuda.py      (benchmarks/gpu_check.sh runs this)

They check what CPU tests cannot: the FT-LP prior lives on the GPU in the autocast dtype,
the bf16 path of the KL matches fp32, evaluation and training run on the device, and the
device input pipeline decodes with nvJPEG, augments on the GPU and is what ``train`` picks.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from domainbed import hparams_registry
from domainbed.algorithms import get_algorithm_class
from domainbed.algorithms.ftlp.gaussian import gaussian_kl
from domainbed.datasets import build_dataset
from domainbed.training.evaluation import evaluate
from domainbed.training.loaders import eval_loader

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DEVICE = "cuda"


@pytest.fixture(scope="module")
def debug224():
    """Debug224: random 224 px tensors; its hparam defaults pick ResNet-18, pretrained false."""
    return build_dataset("Debug224", None, [0], {})


def make(name: str, data, **overrides):
    torch.manual_seed(0)
    hparams = hparams_registry.default_hparams(name, "Debug224")
    hparams.update({"batch_size": 8, **overrides})
    assert hparams["backbone"] == "resnet18" and hparams["pretrained"] is False
    return get_algorithm_class(name)(data.input_shape, data.num_classes, 2, hparams).setup(DEVICE)


def minibatches(data, n: int = 8):
    return [(data[i].x[:n], data[i].y[:n]) for i in (1, 2)]  # on the CPU, as a loader yields them


def test_ftlp_prior_stays_on_the_gpu_in_bf16(debug224):
    torch.cuda.reset_peak_memory_stats()
    alg = make("ERM_FTLP", debug224)
    assert alg._amp_dtype == torch.bfloat16  # precision auto -> bf16 on CUDA
    for _ in range(3):
        logs = alg.update(minibatches(debug224))
    assert all(v.device.type == "cuda" for v in logs.values())  # logs stay on the device
    assert all(math.isfinite(v.item()) for v in logs.values())

    prior = alg.prior_network
    params = list(prior.parameters())
    assert params and all(p.device.type == "cuda" and p.dtype == torch.bfloat16 for p in params)
    assert all(not p.requires_grad and p.grad is None for p in params)
    assert all(b.device.type == "cuda" for b in prior.buffers())
    assert not prior.training
    # Nothing prior-related was left on the CPU: the KL module (but its step counters), the optimizer state.
    # (its `calibrated` flag stays on the CPU by design: read every step without a device sync).
    kl_tensors = list(alg.prior_kl.parameters()) + [b for n, b in alg.prior_kl.named_buffers() if n != "calibrated"]
    assert kl_tensors and all(t.device.type == "cuda" for t in kl_tensors)
    assert alg.prior_kl.calibrated.device.type == "cpu" and alg.noise_step.device.type == "cpu"
    for state in alg.optimizer.state.values():
        assert all(v.device.type == "cuda" for v in state.values() if torch.is_tensor(v) and v.dim() > 0)
    # The prior is in no optimizer group.
    optimised = {id(p) for g in alg.optimizer.param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in params}

    peak = torch.cuda.max_memory_allocated()
    assert 0 < peak < torch.cuda.get_device_properties(0).total_memory


def test_bf16_gaussian_kl_matches_fp32():
    """Under bf16 autocast the KL of bf16 features equals the fp32 KL of the same values to
    fp32 rounding (rtol 1e-5), and the fp32 KL of the unrounded features to bf16 input
    rounding (rtol 2e-2): the function leaves autocast and computes in fp32."""
    g = torch.Generator(device=DEVICE).manual_seed(0)
    layer = torch.nn.Linear(512, 512).to(DEVICE)
    x = torch.randn(64, 512, device=DEVICE, generator=g)
    mu_q32 = torch.randn(64, 512, device=DEVICE, generator=g)
    var_p = torch.rand(512, device=DEVICE, generator=g) * 0.5 + 0.05
    var_q = torch.rand(512, device=DEVICE, generator=g) * 0.5 + 0.05
    with torch.autocast("cuda", dtype=torch.bfloat16):
        mu_p = layer(x)  # a bf16 activation, as the featurizer's under autocast
        mu_q = mu_q32.to(torch.bfloat16)  # the prior's features, held in bf16
        assert mu_p.dtype == torch.bfloat16
        kl = gaussian_kl(mu_p, var_p, mu_q, var_q, reduction="mean")
    assert kl.dtype == torch.float32
    same_values = gaussian_kl(mu_p.double(), var_p.double(), mu_q.double(), var_q.double(), reduction="mean")
    torch.testing.assert_close(kl.double(), same_values, rtol=1e-5, atol=0)
    fp32 = gaussian_kl(layer(x).float(), var_p, mu_q32, var_q, reduction="mean")
    torch.testing.assert_close(kl, fp32, rtol=2e-2, atol=0)


def test_evaluation_on_cuda(debug224):
    alg = make("ERM", debug224)
    alg.update(minibatches(debug224))
    loader = eval_loader(debug224[1], batch_size=16, num_workers=0, pin_memory=True)
    acc, loss = evaluate(alg, loader)  # the algorithm's own input path: bf16 autocast on CUDA
    assert 0.0 <= acc <= 1.0 and math.isfinite(loss)
    assert alg.training  # evaluate() restores the mode

    class FP32Inputs:  # the same input path without autocast
        def prepare_input(self, x):
            return alg.prepare_input(x)

        def autocast(self):
            return contextlib.nullcontext()

    # The bf16 evaluation agrees with an fp32 one on the same weights (loss to bf16 precision).
    _, loss32 = evaluate(alg, loader, inputs=FP32Inputs())
    assert loss == pytest.approx(loss32, rel=5e-2, abs=5e-2)


def test_train_script_on_cuda(tmp_path):
    """The training loop end to end on the GPU: FT-LP, a checkpoint, records with mem_gb."""
    import json

    from domainbed.scripts import train

    out = tmp_path / "run"
    train.main(["--dataset", "Debug224", "--algorithm", "ERM_FTLP", "--steps", "3", "--checkpoint_freq", "2",
                "--device", "cuda", "--output_dir", str(out), "--skip_model_save"])
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert (out / "done").exists() and records
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["ftlp_kl"]) for r in records)
    assert 0 < records[-1]["mem_gb"] < 1000


# ------------------------------------------------------------------ device input pipeline (issue 13)
def _jpeg_folder(root, domains: int = 2, sizes=((96, 72), (64, 80), (120, 90))):
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(0)
    for d in range(domains):
        for c in range(2):
            folder = root / f"dom{d}" / f"cls{c}"
            folder.mkdir(parents=True)
            for i, (w, h) in enumerate(sizes):
                coarse = Image.fromarray(rng.randint(0, 256, (6, 6, 3), dtype=np.uint8))
                img = np.asarray(coarse.resize((w, h), Image.BICUBIC), dtype=np.float32)
                img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.jpg", quality=90)
    return root


def test_nvjpeg_batched_decode_close_to_cpu_decode(tmp_path):
    """decode_jpeg on a list with device cuda (nvJPEG) against the CPU decoder (libjpeg):
    the IDCT and chroma upsampling may differ, so a few grey levels, not bit for bit."""
    from domainbed.datasets.device_pipeline import decode_images, read_for_device

    files = sorted(str(p) for p in _jpeg_folder(tmp_path, domains=1).rglob("*.jpg"))
    images = [read_for_device(f) for f in files]
    assert all(im.encoded for im in images)
    gpu = decode_images(images, torch.device(DEVICE))
    cpu = decode_images(images, torch.device("cpu"))
    for g, c in zip(gpu, cpu):
        assert g.device.type == torch.device(DEVICE).type and g.dtype == torch.uint8 and g.shape == c.shape
        diff = (g.cpu().int() - c.int()).abs().float()
        print(f"nvJPEG vs libjpeg: mean {diff.mean():.3f}, max {diff.max():.0f} grey levels")
        assert diff.mean() <= 1.5 and diff.max() <= 24


def test_batched_augmentation_on_cuda_matches_the_cpu_run():
    """The same pixels and parameters through the batched augmentation on the GPU and on the
    CPU: uint8 resize rounds on each device in its own way (1 level), the rest is float."""
    from domainbed.datasets.augment_params import draw_params
    from domainbed.datasets.batched_augment import augment_batch
    from domainbed.datasets.transforms import IMAGENET_STD
    from domainbed.lib.seeding import sample_generator

    g = torch.Generator().manual_seed(0)
    pixels = [torch.randint(0, 256, (3, 60 + 7 * i, 80 - 5 * i), dtype=torch.uint8, generator=g) for i in range(6)]
    params = [draw_params(int(p.shape[1]), int(p.shape[2]), generator=sample_generator(i)) for i, p in enumerate(pixels)]
    on_gpu = augment_batch([p.to(DEVICE) for p in pixels], params, 32).cpu()
    on_cpu = augment_batch(pixels, params, 32)
    levels = (on_gpu - on_cpu).abs() * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    print(f"batched augmentation, GPU vs CPU: mean {levels.mean():.3f}, max {levels.max():.2f} grey levels")
    assert levels.mean() <= 0.3 and levels.max() <= 3.0


def test_train_script_picks_the_device_pipeline_on_cuda(tmp_path, capsys):
    import json

    from domainbed.scripts import train

    root = _jpeg_folder(tmp_path / "data", domains=3)
    hparams = {"backbone": "resnet18", "pretrained": False, "image_size": 64, "batch_size": 8}
    out = tmp_path / "run"
    train.main(["--dataset", str(root), "--algorithm", "ERM_FTLP", "--test_envs", "0", "--steps", "3",
                "--checkpoint_freq", "2", "--device", "cuda", "--num_workers", "1", "--output_dir", str(out),
                "--skip_model_save", "--hparams", json.dumps(hparams)])
    assert "Input pipeline: device" in capsys.readouterr().out  # input_pipeline auto on CUDA, JPEG folder
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert (out / "done").exists() and records
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["ftlp_kl"]) for r in records)
