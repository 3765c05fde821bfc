"""Benchmark 3, evaluation: ours (``inference_mode``, batch ``eval_batch_size``, one host
read) against the training batch under ``no_grad`` with a host read per batch."""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any

import torch
from bench_common import Config, MemoryMeter, Setting, build, synchronize

from domainbed.training.evaluation import evaluate


def measure_evaluation(s: Setting, eval_batch: int, meter: MemoryMeter) -> dict[str, Any]:
    """Our evaluation (``inference_mode``, batch ``eval_batch``, one host read) against
    evaluation with the training batch under ``no_grad`` reading the count every batch
    (DomainBed's habit). Same network, precision and memory format in both."""
    alg = build(Config("eval", "ERM"), s)
    n = max(eval_batch, s.batch) * 2
    g = torch.Generator().manual_seed(1)
    x_all = torch.randn(n, 3, s.image_size, s.image_size, generator=g).to(s.device)
    y_all = torch.randint(0, s.classes, (n,), generator=g).to(s.device)

    def batches(bs: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(x_all[i:i + bs], y_all[i:i + bs]) for i in range(0, n, bs)]

    ours_batches, naive_batches = batches(eval_batch), batches(s.batch)

    def ours() -> None:
        evaluate(alg, ours_batches)

    def naive() -> None:
        alg.eval()
        correct = 0.0
        with torch.no_grad(), alg.autocast():
            for x, y in naive_batches:
                x = alg.prepare_input(x)
                correct += (alg.predict(x).argmax(1) == y).float().sum().item()
        alg.train()

    out: dict[str, Any] = {"images": n, "eval_batch": eval_batch, "train_batch": s.batch}
    for name, fn in (("inference_mode_large_batch", ours), ("no_grad_train_batch", naive)):
        fn()  # warm-up (cudnn picks algorithms for the new shapes)
        times = []
        for _ in range(s.repeats):
            synchronize(s.device)
            t0 = time.perf_counter()
            fn()
            synchronize(s.device)
            times.append(time.perf_counter() - t0)
        out[name] = {"images_per_s": n / statistics.median(times), "times_s": times}
    out["speedup"] = out["inference_mode_large_batch"]["images_per_s"] / out["no_grad_train_batch"]["images_per_s"]
    gc.collect()
    return out

