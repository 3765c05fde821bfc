"""Benchmark 1, the main configurations: (a) DomainBed-style ERM, (b) our ERM, (c) our
ERM_FTLP, (d) MIRO, (e) naive FT-LP, timed side by side on synthetic data already on the
device; plus the measuring machinery the ablation and compile groups reuse."""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any, Sequence

import torch
from bench_common import DOMAINBED_STYLE, Config, MemoryMeter, Setting, build, run_steps, synchronize
from bench_variants import FoldedPriorFTLP

from domainbed.algorithms import Algorithm


def main_configs() -> list[Config]:
    return [
        Config("a_domainbed_erm", "ERM", dict(DOMAINBED_STYLE), True, "ERM, DomainBed-style: fp32, NCHW, Adam, .item() per step"),
        Config("b_erm", "ERM", {}, False, "our ERM (package defaults, no per-step sync)"),
        Config("c_erm_ftlp", "ERM_FTLP", {}, False, "our ERM_FTLP (default FT-LP hparams)"),
        Config("d_miro", "MIRO", {}, False, "MIRO through our code"),
        Config("e_naive_ftlp", "NaiveFTLP", {}, True, "naive FT-LP: fp32 prior, no_grad, .item() per term"),
    ]



def time_prior_forward(alg: Algorithm, data: list, s: Setting) -> float:
    """Seconds per call of the prior forward alone, as FT-LP runs it inside a step."""
    x = alg.prepare_input(torch.cat([x for x, _ in data]))
    prior = alg.prior_network  # type: ignore[attr-defined]
    stages = alg.ftlp_cfg.uses_stages  # type: ignore[attr-defined]

    def once() -> None:
        with alg.autocast(), torch.inference_mode():
            prior.forward_features(x, intermediates=stages)

    for _ in range(2):
        once()
    times = []
    for _ in range(s.repeats):
        synchronize(s.device)
        t0 = time.perf_counter()
        for _ in range(s.steps):
            once()
        synchronize(s.device)
        times.append((time.perf_counter() - t0) / s.steps)
    return statistics.median(times)


def prepare(config: Config, s: Setting, data: list, meter: MemoryMeter) -> tuple[Algorithm, dict[str, Any]]:
    """Build ``config`` and run its warm-up steps; the peak memory it adds is read here
    (build + at least two steps: from the second on, Adam's state and the activations
    coexist, which is the steady-state peak)."""
    meter.reset()
    t0 = time.perf_counter()
    alg = build(config, s)
    run_steps(alg, data, max(2, s.warmup), config.sync_every_step)
    synchronize(s.device)
    info: dict[str, Any] = {
        "label": config.label,
        "algorithm": config.algorithm,
        "precision": "fp32" if alg._amp_dtype is None else str(alg._amp_dtype).replace("torch.", ""),
        "channels_last": alg._channels_last,
        "fused_optimizer": bool(alg.optimizer.defaults.get("fused")),
        "compile": bool(alg.hparams.get("compile", False)),
        "sync_every_step": config.sync_every_step,
        "peak_mem_mb": meter.peak_mb(),
        "build_and_warmup_s": time.perf_counter() - t0,
    }
    if isinstance(alg, FoldedPriorFTLP):
        info["folded_bn"] = alg.folded_bn
    return alg, info


def measure_group(configs: Sequence[Config], s: Setting, data: list, meter: MemoryMeter,
                  prior_forward: Sequence[str] = (), tolerate_errors: bool = False) -> dict[str, dict[str, Any]]:
    """Time ``configs`` side by side. Every configuration is built and warmed up first, then
    the timed repeats are interleaved (round r runs ``steps`` steps of each configuration, in
    an order rotated every round), so a slow spell of a shared machine hits all of them
    alike instead of one. Reported: the median over rounds of the mean step time."""
    # A throwaway primer first: one-time allocations (cuBLAS/cuDNN workspaces, oneDNN caches,
    # thread pools) would otherwise be charged to the first configuration's memory.
    primer = build(Config("primer", "ERM"), s)
    run_steps(primer, data, 2, False)
    del primer
    built: dict[str, tuple[Config, Algorithm]] = {}
    results: dict[str, dict[str, Any]] = {}
    for config in configs:
        try:
            alg, results[config.name] = prepare(config, s, data, meter)
            built[config.name] = (config, alg)
        except Exception as e:  # an unsupported switch (e.g. compile without a compiler) is a result
            if not tolerate_errors:
                raise
            results[config.name] = {"label": config.label, "error": f"{type(e).__name__}: {e}"[:300]}
            print(f"  {config.name}: failed ({results[config.name]['error'][:120]})", flush=True)
    times: dict[str, list[float]] = {name: [] for name in built}
    order = list(built)
    for r in range(s.repeats):
        for name in order[r % len(order):] + order[:r % len(order)]:
            config, alg = built[name]
            synchronize(s.device)
            t0 = time.perf_counter()
            run_steps(alg, data, s.steps, config.sync_every_step)
            synchronize(s.device)
            times[name].append((time.perf_counter() - t0) / s.steps)
    for name, (_config, alg) in built.items():
        step = statistics.median(times[name])
        results[name].update({
            "step_time_s": step,
            "step_times_s": times[name],
            "steps_per_s": 1.0 / step,
            "images_per_s": s.images_per_step / step,
        })
        if name in prior_forward:
            results[name]["prior_forward_s"] = time_prior_forward(alg, data, s)
        print(f"  {name}: {1e3 * step:.1f} ms/step, +{results[name]['peak_mem_mb']:.0f} MB", flush=True)
    built.clear()
    gc.collect()
    if s.device.type == "cuda":
        torch.cuda.empty_cache()
    return results



def run_main(s: Setting, data: list, meter: MemoryMeter) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """The main group and its ratios (all against (b), our ERM)."""
    configs = measure_group(main_configs(), s, data, meter, prior_forward=("c_erm_ftlp",))
    t = {k: v["step_time_s"] for k, v in configs.items()}
    m = {k: v["peak_mem_mb"] for k, v in configs.items()}
    ratios = {
        "ftlp_over_erm": t["c_erm_ftlp"] / t["b_erm"],
        "miro_over_erm": t["d_miro"] / t["b_erm"],
        "naive_over_ftlp": t["e_naive_ftlp"] / t["c_erm_ftlp"],
        "domainbed_over_ours": t["a_domainbed_erm"] / t["b_erm"],
        "ftlp_mem_over_erm": m["c_erm_ftlp"] / m["b_erm"] if m["b_erm"] > 0 else float("nan"),
        "miro_mem_over_erm": m["d_miro"] / m["b_erm"] if m["b_erm"] > 0 else float("nan"),
        "prior_forward_over_erm_step": configs["c_erm_ftlp"]["prior_forward_s"] / t["b_erm"],
    }
    print_table(configs, configs["b_erm"],
                "Main configurations (x (b): step time over our ERM; peak MB: memory the configuration adds)")
    return configs, ratios


def print_table(rows: dict[str, dict[str, Any]], reference: dict[str, Any] | None, title: str) -> None:
    print(f"\n{title}")
    header = f"{'config':<26}{'prec':>6}{'CL':>4}{'fused':>6}{'sync':>5}{'ms/step':>10}{'steps/s':>9}{'img/s':>9}{'peak MB':>10}{'x (b)':>7}"
    print(header)
    print("-" * len(header))
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:<26}  failed: {r['error']}")
            continue
        ratio = r["step_time_s"] / reference["step_time_s"] if reference else float("nan")
        print(
            f"{name:<26}{r['precision']:>6}{'y' if r['channels_last'] else 'n':>4}{'y' if r['fused_optimizer'] else 'n':>6}"
            f"{'y' if r['sync_every_step'] else 'n':>5}{1e3 * r['step_time_s']:>10.1f}{r['steps_per_s']:>9.2f}"
            f"{r['images_per_s']:>9.1f}{r['peak_mem_mb']:>10.0f}{ratio:>7.2f}"
        )

