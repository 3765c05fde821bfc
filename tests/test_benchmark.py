"""benchmarks/step_time.py and its benchmark modules run end to end on a tiny CPU
configuration and report their ratios and the input pipelines side by side."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCH_DIR / "step_time.py"
RATIOS = ("ftlp_over_erm", "miro_over_erm", "naive_over_ftlp", "domainbed_over_ours")


@pytest.fixture(scope="module")
def step_time():
    """The script as a module (benchmarks/ is not a package; the script puts its folder on
    sys.path so that its bench_* modules import)."""
    name = "benchmarks_step_time"
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


@pytest.mark.slow
def test_tiny_run_prints_ratios_and_pipelines_as_last_json_line(step_time, tmp_path, capsys):
    out = tmp_path / "result.json"
    threads = torch.get_num_threads()
    try:  # in-process: no second torch import; --threads changes a process-wide setting
        step_time.main([
            "--device", "cpu", "--backbone", "resnet18", "--image_size", "32", "--batch", "4", "--domains", "2",
            "--steps", "2", "--warmup", "1", "--repeats", "1", "--threads", "1", "--ablations",
            "--eval_batch", "8", "--workers", "0", "--data_images", "2", "--data_batches", "2",
            "--pipelines", "cpu,device", "--json", str(out),
        ])
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    for key in RATIOS + ("ftlp_mem_over_erm",):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["device"] == "cpu" and result["backbone"] == "resnet18"
    assert (result["image_size"], result["batch"], result["domains"]) == (32, 4, 2)
    for name in ("a_domainbed_erm", "b_erm", "c_erm_ftlp", "d_miro", "e_naive_ftlp"):
        config = result["configs"][name]
        assert config["step_time_s"] > 0 and config["images_per_s"] > 0 and config["peak_mem_mb"] >= 0
    # (a) is DomainBed-style; (e) syncs every step; (b) does not.
    assert result["configs"]["a_domainbed_erm"]["precision"] == "fp32"
    assert not result["configs"]["a_domainbed_erm"]["channels_last"]
    assert result["configs"]["e_naive_ftlp"]["sync_every_step"] and not result["configs"]["b_erm"]["sync_every_step"]
    assert all("error" not in r for r in result["ablations"].values()), result["ablations"]
    assert "erm_sync_every_step" in result["ablations"] and "erm_compile" not in result["ablations"]
    assert result["evaluation"]["speedup"] > 0
    # Both input pipelines, side by side; the device one ran its batched path on the CPU.
    for name in ("cpu", "device"):
        row = result["pipelines"][name]
        assert row["measured"] and row["runs_on"] == "cpu"
        assert row["loader_images_per_s"] > 0 and row["step_images_per_s"] > 0
        assert row["loader_images_per_s"] == result["data"]["pipelines"][name]["loader_images_per_s"]
    assert result["data"]["pipelines"]["cpu"]["cached_loader_images_per_s"] > 0
    assert result["pipelines"]["synthetic_step_images_per_s"]["b_erm"] == result["configs"]["b_erm"]["images_per_s"]
    assert json.loads(out.read_text()) == result


def test_unmeasured_pipelines_say_why_instead_of_a_number(step_time):
    configs = {k: {"images_per_s": 10.0} for k in ("b_erm", "c_erm_ftlp")}
    cpu_only = {"device": "cpu", "configs": configs,
                "data": {"pipelines": {"cpu": {"runs_on": "cpu", "loader_images_per_s": 5.0, "step_images_per_s": 4.0}}}}
    summary = step_time.pipeline_summary(cpu_only)
    assert summary["cpu"] == {"measured": True, "runs_on": "cpu", "loader_images_per_s": 5.0, "step_images_per_s": 4.0}
    assert summary["device"] == {"measured": False, "reason": "no CUDA device (--pipelines cpu,device runs it on the CPU)"}
    skipped = step_time.pipeline_summary({"device": "cuda", "configs": configs})
    assert skipped["cpu"]["reason"] == skipped["device"]["reason"] == "--skip_data"
    assert step_time.resolve_pipelines("auto", torch.device("cpu")) == ["cpu"]
    assert step_time.resolve_pipelines("auto", torch.device("cuda")) == ["cpu", "device"]
    with pytest.raises(SystemExit, match="--pipelines"):
        step_time.resolve_pipelines("cpu,gpu", torch.device("cpu"))


def test_naive_prior_runs_in_fp32_and_folding_keeps_the_features(step_time):
    import bench_common as bc  # importable once the script has put benchmarks/ on sys.path

    s = bc.Setting(torch.device("cpu"), "resnet18", 32, 2, 2, 3, 1, 1, 1, precision="bf16")
    naive = bc.build(bc.Config("e", "NaiveFTLP"), s)
    ours = bc.build(bc.Config("c", "ERM_FTLP"), s)
    assert all(p.dtype == torch.float32 for p in naive.prior_network.parameters())
    assert all(p.dtype == torch.bfloat16 for p in ours.prior_network.parameters())
    # Same seed, fp32: the folded prior computes the features of the exact one.
    s.precision = "fp32"
    exact = bc.build(bc.Config("c", "ERM_FTLP"), s)
    folded = bc.build(bc.Config("f", "FoldedPriorFTLP"), s)
    assert folded.folded_bn > 0  # a ResNet-18 has conv+BN pairs to fold
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(folded.prior_network(x), exact.prior_network(x), rtol=1e-3, atol=1e-4)
