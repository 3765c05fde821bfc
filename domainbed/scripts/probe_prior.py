"""Probe a frozen pre-trained prior before spending GPU hours on FT-LP or MIRO.

For each domain held out in turn: a linear classifier on the prior's pooled features of the
other domains, scored on the held-out one; and for every layer FT-LP or MIRO would regularise,
the dead-channel fraction and the per-channel feature variance. The prior is built from the
same hparams as training (backbone, image_size, freeze_bn, weights), and images use the
evaluation transform. Writes a table, a JSON file and a plain reading per domain. The logic
lives in :mod:`domainbed.algorithms.ftlp.probe`.

    python -m domainbed.scripts.probe_prior --dataset OfflineDigits --data_dir ./domainbed/data/ \\
        --hparams '{"image_size": 64, "freeze_bn": true}'
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from domainbed import hparams_registry
from domainbed.algorithms.ftlp.probe import DEFAULT_ALGORITHM, probe_prior
from domainbed.datasets import build_dataset
from domainbed.lib.errors import UserError
from domainbed.networks.backbones import resolve_backbone_name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m domainbed.scripts.probe_prior",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="RotatedMNISTSubset",
                   help="a registered dataset name, or the path of a ROOT/<domain>/<class>/<image> folder")
    p.add_argument("--data_dir", default="./domainbed/data/")
    p.add_argument("--algorithm", default=DEFAULT_ALGORITHM,
                   help=f"whose hparams (defaults and valid keys) --hparams is read against (default {DEFAULT_ALGORITHM}); the prior is the same")
    p.add_argument("--hparams", default=None, help='JSON overrides, e.g. \'{"image_size": 64, "freeze_bn": true}\'')
    p.add_argument("--test_envs", type=int, nargs="+", default=None,
                   help="domains to hold out, each in turn (default: every domain)")
    p.add_argument("--max_per_domain", type=int, default=1000,
                   help="images per domain, a fixed random subset (0: all)")
    p.add_argument("--batch_size", type=int, default=None,
                   help="images per forward pass (default: as in training with batch statistics, else eval_batch_size)")
    p.add_argument("--C", type=float, default=1.0, dest="c", help="inverse L2 strength of the logistic regression")
    p.add_argument("--seed", type=int, default=0, help="seeds the image subset and the classifier")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--num_workers", type=int, default=None, help="data-loader workers (default: the dataset's)")
    p.add_argument("--output_dir", default=None, help="where the JSON file goes (default: probe_prior_output/)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def output_name(dataset: str, hparams: dict[str, Any], bn_mode: str) -> str:
    """``<dataset>_<backbone>_<size>px_bn-<mode>.json``, the dataset's folder name for a path."""
    stem = Path(dataset.rstrip("/\\")).name if os.sep in dataset else dataset
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)
    return f"{stem}_{resolve_backbone_name(hparams)}_{hparams.get('image_size')}px_bn-{bn_mode}.json"


def run(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    overrides = hparams_registry.parse_overrides(args.hparams)
    hparams = hparams_registry.get_hparams(args.algorithm, args.dataset, 0, 0, overrides)
    # The probe reads evaluation images: no training augmentation (image folders apply it per item).
    dataset = build_dataset(args.dataset, args.data_dir, [], {**hparams, "data_augmentation": False})
    if args.max_per_domain < 0:
        raise UserError("--max_per_domain must be >= 0 (0: every image)")
    workers = dataset.N_WORKERS if args.num_workers is None else args.num_workers

    def progress(it: Iterable, total: int) -> Iterable:
        from tqdm import tqdm

        return tqdm(it, total=total, desc="prior features", unit="batch", disable=args.no_progress, file=sys.stderr)

    start = time.perf_counter()
    result = probe_prior(dataset.datasets, dataset.environments, dataset.num_classes, tuple(dataset.input_shape),
                         hparams, held_out=args.test_envs, max_per_domain=args.max_per_domain or None,
                         batch_size=args.batch_size, seed=args.seed, device=args.device, num_workers=workers, c=args.c,
                         progress=progress)
    report = {"dataset": args.dataset, "image_size": hparams.get("image_size"),
              "backbone": resolve_backbone_name(hparams), "args": vars(args), "hparams": hparams,
              "torch_threads": torch.get_num_threads(), **result.to_json()}
    report["seconds"]["total"] = time.perf_counter() - start
    print(result.table())
    out_dir = Path(args.output_dir or "probe_prior_output")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / output_name(args.dataset, hparams, result.bn_mode)
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"\nProbe took {report['seconds']['total']:.1f} s ({torch.get_num_threads()} threads); wrote {path}")
    return report, path


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except UserError as err:
        raise SystemExit(f"probe_prior: error: {err}") from None


if __name__ == "__main__":
    main()
