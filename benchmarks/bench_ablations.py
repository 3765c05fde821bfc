"""Benchmark 2, ablations and compile: each optimisation of our ERM switched alone, two
candidate prior optimisations that are not in the package, and (``--compile``) the
``compile`` hparam on (b) and (c); (b) and (c) are rebuilt in the group as references."""

from __future__ import annotations

from typing import Any

from bench_common import Config, MemoryMeter, Setting
from bench_steps import measure_group


def ablation_configs(erm: dict[str, Any], ablations: bool, compile_: bool) -> list[Config]:
    """The references (b) and (c) rebuilt in this group; with ``ablations``, each
    optimisation switched alone to the opposite of what (b) used (``erm``: its measured
    settings, so the ablation follows the package defaults on either device); with
    ``compile_``, (b) and (c) with the ``compile`` hparam."""
    bf16 = erm["precision"] != "fp32"
    cl, fused = erm["channels_last"], erm["fused_optimizer"]
    onoff = lambda flag: "off" if flag else "on"  # noqa: E731
    out = [
        Config("b_erm", "ERM", {}, False, "reference: our ERM"),
        Config("c_erm_ftlp", "ERM_FTLP", {}, False, "reference: our ERM_FTLP", "c_erm_ftlp"),
    ]
    if ablations:
        out += [
            Config(f"erm_bf16_{onoff(bf16)}", "ERM", {"precision": "fp32" if bf16 else "bf16"}, False,
                   f"(b) with bf16 autocast {onoff(bf16)}"),
            Config(f"erm_channels_last_{onoff(cl)}", "ERM", {"channels_last": not cl}, False,
                   f"(b) with channels_last {onoff(cl)}"),
            Config(f"erm_fused_adam_{onoff(fused)}", "ERM", {"fused_optimizer": not fused}, False,
                   f"(b) with fused Adam {onoff(fused)}"),
            Config("erm_sync_every_step", "ERM", {}, True, "(b) with .item() on the logs every step"),
            Config("ftlp_prior_fp32_no_grad", "NaiveFTLP", {}, False,
                   "(c) with the naive prior (fp32, no_grad) but no per-step sync", "c_erm_ftlp"),
            Config("ftlp_prior_bn_folded", "FoldedPriorFTLP", {}, False,
                   "(c) with BN folded into the prior's convs (candidate, not in the package)", "c_erm_ftlp"),
        ]
    if compile_:
        out += [
            Config("erm_compile", "ERM", {"compile": True}, False, "(b) with torch.compile on the featurizer"),
            Config("ftlp_compile", "ERM_FTLP", {"compile": True}, False,
                   "(c) with torch.compile (the hparam compiles the featurizer and the prior)", "c_erm_ftlp"),
        ]
    return out


def run_ablations(s: Setting, data: list, meter: MemoryMeter, main: dict[str, dict[str, Any]],
                  ablations: bool, compile_: bool) -> dict[str, Any]:
    """The group's rows (key ``ablations``) and the compile ratios, when measured."""
    group = ablation_configs(main["b_erm"], ablations, compile_)
    rows = measure_group(group, s, data, meter, tolerate_errors=True)
    for config in group:
        r, ref = rows[config.name], rows.get(config.reference, {})
        if "step_time_s" in r and "step_time_s" in ref:
            r["reference"] = config.reference
            r["over_reference"] = r["step_time_s"] / ref["step_time_s"]
    out: dict[str, Any] = {"ablations": rows}
    print_ablations(rows)
    erm_c = rows.get("erm_compile", {}).get("step_time_s")
    if erm_c and "step_time_s" in rows.get("ftlp_compile", {}):
        out["ftlp_compile_over_erm_compile"] = rows["ftlp_compile"]["step_time_s"] / erm_c
        print(f"ftlp_compile / erm_compile: {out['ftlp_compile_over_erm_compile']:.3f}")
    if erm_c and "step_time_s" in rows.get("b_erm", {}):
        # (a)/(b) from the main group times (b)/(b compiled) from this one.
        t = {k: main[k]["step_time_s"] for k in ("a_domainbed_erm", "b_erm")}
        out["domainbed_over_ours_compiled"] = t["a_domainbed_erm"] * rows["b_erm"]["step_time_s"] / (t["b_erm"] * erm_c)
        print(f"domainbed / our compiled ERM: {out['domainbed_over_ours_compiled']:.3f}")
    return out


def print_ablations(rows: dict[str, dict[str, Any]]) -> None:
    print(f"\n{'ablation':<26}{'ms/step':>10}{'peak MB':>10}{'vs ref':>8}  reference / what changed")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:<26}  failed: {r['error']}")
            continue
        print(f"{name:<26}{1e3 * r['step_time_s']:>10.1f}{r['peak_mem_mb']:>10.0f}{r.get('over_reference', float('nan')):>8.2f}"
              f"  {r.get('reference', '')}: {r['label']}")

