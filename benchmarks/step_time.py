#!/usr/bin/env python
"""Step time, throughput and peak memory of ERM, FT-LP and MIRO, and images/s of the input
pipelines, side by side in one process (issues 5 and 13).

Four benchmarks, one module each (benchmarks/bench_*.py):

1. main configurations (bench_steps): (a) DomainBed-style ERM (fp32, NCHW, plain Adam,
   ``.item()`` every step), (b) our ERM with the package defaults, (c) our ERM_FTLP,
   (d) MIRO, (e) FT-LP written the usual way; synthetic data already on the device,
   timed repeats interleaved; ratios against (b);
2. ablations and compile (bench_ablations, ``--ablations`` / ``--compile``): each
   optimisation of (b) switched alone, candidate prior optimisations, the ``compile`` hparam;
3. evaluation (bench_eval, with ``--ablations``): ``inference_mode`` with a large batch
   against ``no_grad`` with the training batch and a host read per batch;
4. input pipelines (bench_data, unless ``--skip_data``): real JPEG files through the
   package's loaders, the CPU path and (on CUDA, or with ``--pipelines cpu,device``) the
   device path: loader images/s and ERM step images/s fed by each.

The last line of stdout is one JSON object with every number (also written by ``--json``,
which is rewritten after each benchmark, so a run cut short keeps what it measured). Its
``pipelines`` entry puts loader and step images/s of each input pipeline side by side.
Weights are random (hparam ``pretrained`` false): step time does not depend on their values.

    python benchmarks/step_time.py --quick                       # CPU, < 1 minute
    python benchmarks/step_time.py --device cuda --compile --json out.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
for _path in (BENCH_DIR, REPO_ROOT):  # runs from a checkout without installing the package
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402
from bench_ablations import run_ablations  # noqa: E402
from bench_common import HPARAM_DATASET, MemoryMeter, Setting, device_name, make_batches  # noqa: E402
from bench_data import PIPELINES, measure_data  # noqa: E402
from bench_eval import measure_evaluation  # noqa: E402
from bench_steps import run_main  # noqa: E402

from domainbed import hparams_registry  # noqa: E402

# --quick: one intra-op thread, because on a shared 2-core machine two OpenMP threads keep
# waiting for whichever one was descheduled (measured here: 3x slower steps under load).
QUICK = {"backbone": "resnet18", "image_size": 64, "batch": 8, "steps": 4, "warmup": 2, "repeats": 3, "threads": 1}
FULL = {"backbone": "resnet50", "image_size": 224, "batch": 32, "steps": 30, "warmup": 10, "repeats": 3}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/step_time.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--backbone", default=None, help=f"default {FULL['backbone']} ({QUICK['backbone']} with --quick)")
    p.add_argument("--image_size", type=int, default=None, help=f"default {FULL['image_size']} ({QUICK['image_size']} with --quick)")
    p.add_argument("--batch", type=int, default=None, help=f"images per source domain per step; default {FULL['batch']} ({QUICK['batch']} with --quick)")
    p.add_argument("--domains", type=int, default=3, help="number of source domains")
    p.add_argument("--classes", type=int, default=7)
    p.add_argument("--steps", type=int, default=None, help=f"timed steps per repeat; default {FULL['steps']} ({QUICK['steps']} with --quick)")
    p.add_argument("--warmup", type=int, default=None, help=f"untimed steps first; default {FULL['warmup']} ({QUICK['warmup']} with --quick)")
    p.add_argument("--repeats", type=int, default=None, help=f"timed repeats, median reported; default {FULL['repeats']}")
    p.add_argument("--eval_batch", type=int, default=None, help="evaluation batch of the ablation (default: hparam eval_batch_size)")
    p.add_argument("--workers", type=int, default=None,
                   help="loader workers per domain (default: the image datasets' N_WORKERS, as train uses, "
                        "capped so that all domains' workers together fit the CPU cores)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="autocast of our configurations (b)-(e); auto: the package default (bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's; 1 with --quick)")
    p.add_argument("--data_images", type=int, default=None, help="JPEG files per class and domain (default 8 with --quick, else 32)")
    p.add_argument("--data_batches", type=int, default=None, help="timed loader steps (default 10 with --quick, else 20)")
    p.add_argument("--pipelines", default="auto",
                   help="input pipelines to measure, comma-separated from cpu,device; auto: cpu, and device on CUDA "
                        "(device on a CPU run applies the batched path on the CPU)")
    p.add_argument("--json", default=None, help="also write the JSON result here (rewritten after each benchmark)")
    p.add_argument("--quick", action="store_true", help="small CPU configuration (ResNet-18, 64 px, batch 8; random weights)")
    p.add_argument("--ablations", action="store_true", help="switch each optimisation alone; evaluation ablation")
    p.add_argument("--compile", action="store_true", help="add (b) and (c) with the compile hparam, in the ablation group")
    p.add_argument("--skip_data", action="store_true", help="skip the JPEG input-pipeline measurement")
    return p


def resolve_setting(args: argparse.Namespace) -> Setting:
    if args.device == "auto":
        device = torch.device("cpu" if args.quick or not torch.cuda.is_available() else "cuda")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda asked for, but no CUDA GPU is visible; use --device cpu")
    base = QUICK if args.quick else FULL
    pick = lambda key: getattr(args, key) if getattr(args, key) is not None else base[key]  # noqa: E731
    s = Setting(device, pick("backbone"), pick("image_size"), pick("batch"), args.domains, args.classes,
                pick("steps"), pick("warmup"), pick("repeats"), args.precision)
    for key in ("image_size", "batch", "domains", "classes", "steps", "repeats"):
        if getattr(s, key) <= 0:
            raise SystemExit(f"--{key} must be positive, got {getattr(s, key)}")
    if s.warmup < 0:
        raise SystemExit(f"--warmup must be >= 0, got {s.warmup}")
    return s


def resolve_pipelines(value: str, device: torch.device) -> list[str]:
    if value == "auto":
        return ["cpu", "device"] if device.type == "cuda" else ["cpu"]
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in PIPELINES]
    if bad or not names:
        raise SystemExit(f"--pipelines takes auto or a comma-separated subset of {','.join(PIPELINES)}; got {value!r}")
    return names


def pipeline_summary(result: dict[str, Any]) -> dict[str, Any]:
    """Loader and step images/s of each input pipeline side by side; a pipeline that was
    not measured says why instead of carrying a number."""
    measured = result.get("data", {}).get("pipelines", {})
    out: dict[str, Any] = {}
    for name in PIPELINES:
        if name in measured:
            r = measured[name]
            out[name] = {"measured": True, **{k: r[k] for k in ("runs_on", "loader_images_per_s", "step_images_per_s")}}
        elif "data" not in result:
            out[name] = {"measured": False, "reason": "--skip_data"}
        elif name == "device" and not result["device"].startswith("cuda"):
            out[name] = {"measured": False, "reason": "no CUDA device (--pipelines cpu,device runs it on the CPU)"}
        else:
            out[name] = {"measured": False, "reason": "not requested (--pipelines)"}
    out["synthetic_step_images_per_s"] = {k: result["configs"][k]["images_per_s"] for k in ("b_erm", "c_erm_ftlp")}
    return out


def _save(result: dict[str, Any], path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    s = resolve_setting(args)
    pipelines = resolve_pipelines(args.pipelines, s.device)
    threads = args.threads if args.threads is not None else (QUICK["threads"] if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    meter = MemoryMeter(s.device)
    data = make_batches(s)
    t_start = time.perf_counter()
    print(f"step_time: {device_name(s.device)}, torch {torch.__version__}")
    print(f"{s.backbone} (random weights: pretrained false; speed does not depend on weight values), "
          f"{s.image_size} px, {s.domains} domains x {s.batch} images = {s.images_per_step} per step; "
          f"{s.warmup} warm-up + {s.repeats} x {s.steps} timed steps; memory: {meter.method}")

    print("Main configurations (timed side by side, repeats interleaved):")
    configs, ratios = run_main(s, data, meter)
    result: dict[str, Any] = {
        **ratios,
        "device": str(s.device),
        "device_name": device_name(s.device),
        "torch": torch.__version__,
        "backbone": s.backbone,
        "pretrained": False,
        "image_size": s.image_size,
        "batch": s.batch,
        "domains": s.domains,
        "images_per_step": s.images_per_step,
        "steps": s.steps,
        "warmup": s.warmup,
        "repeats": s.repeats,
        "memory_method": meter.method,
        "torch_threads": torch.get_num_threads(),
        "precision_setting": s.precision,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "configs": configs,
    }
    _save(result, args.json)

    if not args.skip_data:
        from domainbed.datasets.images import ImageFolderDomains

        cap = max(1, (os.cpu_count() or 1) // s.domains)
        workers = min(ImageFolderDomains.N_WORKERS, cap) if args.workers is None else args.workers
        per_class = args.data_images or (8 if args.quick else 32)
        n_batches = args.data_batches or (10 if args.quick else 20)
        print(f"\nInput pipelines ({s.domains} x 4 x {per_class} JPEG files, 256 px, q90; {workers} workers per domain):")
        d = measure_data(s, pipelines, workers, per_class, n_batches)
        consumed = {k: configs[k]["images_per_s"] for k in ("b_erm", "c_erm_ftlp")}
        d["consumed_images_per_s"] = consumed
        d["bottleneck"] = {p: {k: r["loader_images_per_s"] < v for k, v in consumed.items()} for p, r in d["pipelines"].items()}
        result["data"] = d
        for p, r in d["pipelines"].items():
            verdict = "IS the bottleneck" if d["bottleneck"][p]["b_erm"] else "is not the bottleneck"
            print(f"  {p}: {r['loader_images_per_s']:.0f} img/s ready on {r['runs_on']}, ERM fed by it "
                  f"{r['step_images_per_s']:.0f} img/s; (b) consumes {consumed['b_erm']:.0f} img/s of synthetic data: "
                  f"the loader {verdict}")
        if "cpu" in d["pipelines"]:
            c = d["pipelines"]["cpu"]
            print(f"  cpu, decoded cache (uint8, {c['cache_side_px']} px), augment only: "
                  f"{c['cached_loader_images_per_s']:.0f} img/s ({c['cache_gain']:.2f}x)")
        if s.device.type == "cpu":
            print("  (on the CPU, loader workers and training share the same cores)")
        _save(result, args.json)

    if args.ablations or args.compile:
        # A group of its own, with (b) and (c) rebuilt in it as the references.
        print("\nAblations / compile (timed side by side with their references):")
        result.update(run_ablations(s, data, meter, configs, args.ablations, args.compile))
        _save(result, args.json)
    if args.ablations:
        eval_batch = args.eval_batch or int(hparams_registry.default_hparams("ERM", HPARAM_DATASET)["eval_batch_size"])
        result["evaluation"] = ev = measure_evaluation(s, eval_batch, meter)
        print(f"\nEvaluation: inference_mode, batch {eval_batch}: {ev['inference_mode_large_batch']['images_per_s']:.0f} img/s; "
              f"no_grad, batch {s.batch}, sync per batch: {ev['no_grad_train_batch']['images_per_s']:.0f} img/s "
              f"({ev['speedup']:.2f}x)")

    result["pipelines"] = pipeline_summary(result)
    result["total_s"] = time.perf_counter() - t_start
    print(f"\nftlp_over_erm {result['ftlp_over_erm']:.3f}  miro_over_erm {result['miro_over_erm']:.3f}  "
          f"naive_over_ftlp {result['naive_over_ftlp']:.3f}  domainbed_over_ours {result['domainbed_over_ours']:.3f}  "
          f"ftlp_mem_over_erm {result['ftlp_mem_over_erm']:.3f}  prior_forward/erm_step {result['prior_forward_over_erm_step']:.3f}  "
          f"({result['total_s']:.0f} s)")
    for name in PIPELINES:
        r = result["pipelines"][name]
        if "loader_images_per_s" in r:
            print(f"{name} pipeline: loader {r['loader_images_per_s']:.0f} img/s, step {r['step_images_per_s']:.0f} img/s")
        else:
            print(f"{name} pipeline: not measured: {r['reason']}")
    _save(result, args.json)
    print(json.dumps(result, sort_keys=True), flush=True)
    return result


if __name__ == "__main__":
    main()
