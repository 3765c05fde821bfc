"""Evaluate an exported model per domain: ``python -m domainbed.scripts.evaluate``.

    python -m domainbed.scripts.evaluate --model FILE --data_dir DIR [--dataset D] [--envs E ...]
        [--split all|in|out] [--ece_bins 15] [--output_dir OUT]

With ``--dataset`` (a registered dataset, or the folder dataset the model was trained on),
the domains are that dataset's; ``--split in`` / ``out`` take the model's own trial split,
so the held-out domain's ``in`` accuracy is the number in its run's record and the table.
Without ``--dataset``, ``--data_dir`` is any image folder, ``DIR/<class>/<image>`` (one new
domain) or ``DIR/<domain>/<class>/<image>``, class folders named as the model's classes.

Prints per-domain accuracy, macro-F1, NLL and ECE (equal-width confidence bins, 15 by
default) and per-class accuracy; writes ``metrics.json`` (also the confusion matrices and
reliability bins) and ``reliability.png`` to ``--output_dir``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import torch

from domainbed.lib.errors import UserError
from domainbed.training.arguments import resolve_device
from domainbed.training.metrics import DEFAULT_ECE_BINS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Per-domain accuracy, per-class accuracy, macro-F1, confusion "
                                                 "matrix, NLL and ECE of an exported model.")
    parser.add_argument("--model", required=True, help="file written by domainbed.scripts.export_model")
    parser.add_argument("--data_dir", required=True, help="--data_dir of a registered dataset, or an image folder")
    parser.add_argument("--dataset", default=None, help="registered dataset name (omit for an image folder)")
    parser.add_argument("--envs", nargs="+", default=None, help="domains to evaluate, by name or index (default: all)")
    parser.add_argument("--split", choices=("all", "in", "out"), default="all",
                        help="with --dataset: the whole domain, or the in/out split of the model's trial (default all)")
    parser.add_argument("--ece_bins", type=int, default=DEFAULT_ECE_BINS, help="equal-width confidence bins of the ECE")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--output_dir", default=None, help="where metrics.json and reliability.png go "
                                                           "(default: evaluation_<model file name>)")
    return parser


def _pick(names: list[str], wanted: list[str] | None) -> list[int]:
    if not wanted:
        return list(range(len(names)))
    out = []
    for w in wanted:
        if w in names:
            out.append(names.index(w))
        elif w.isdigit() and int(w) < len(names):
            out.append(int(w))
        else:
            raise UserError(f"unknown domain {w!r}; domains: {', '.join(names)} (or their indices)")
    return out


def dataset_domains(model: Any, args: argparse.Namespace) -> Iterator[tuple[str, Any, int]]:
    """``(name, batches, n_batches)`` per chosen domain of a registered dataset."""
    from torch.utils.data import DataLoader

    from domainbed.datasets import build_dataset, num_environments
    from domainbed.datasets.splits import in_out_split

    info = model.info
    # Every domain as a test domain: the evaluation transform everywhere, as for the held-out one in training.
    data = build_dataset(args.dataset, args.data_dir, list(range(num_environments(args.dataset))), info["hparams"])
    names = list(data.environments)
    if data.num_classes != len(model.class_names):
        raise UserError(f"{args.dataset} has {data.num_classes} classes, the model {len(model.class_names)}")
    train_args = info.get("args") or {}
    for i in _pick(names, args.envs):
        domain = data[i]
        if args.split != "all":
            in_, out = in_out_split(domain, i, int(train_args.get("trial_seed", 0)),
                                    float(train_args.get("holdout_fraction", 0.2)))
            domain = in_ if args.split == "in" else out
        loader = DataLoader(domain, batch_size=args.batch_size, shuffle=False)
        label = names[i] if args.split == "all" else f"{names[i]} ({args.split})"
        yield label, loader, len(loader)


def folder_domains(model: Any, args: argparse.Namespace, failures: list[str]) -> Iterator[tuple[str, Any, int]]:
    """``(name, batches, n_batches)`` per domain of an image folder; unreadable files go to ``failures``."""
    from torch.utils.data import DataLoader

    from domainbed.inference.images import ImageFiles, collate, image_transform, labelled_folder

    transform = image_transform(model.input_shape, model.normalisation)
    domains = labelled_folder(args.data_dir, model.class_names)
    for i in _pick(list(domains), args.envs):
        name = list(domains)[i]
        files = [p for p, _ in domains[name]]
        labels = torch.tensor([y for _, y in domains[name]])
        loader = DataLoader(ImageFiles(files, transform), batch_size=args.batch_size, shuffle=False, collate_fn=collate)

        def batches(loader: DataLoader = loader, files: list = files, labels: torch.Tensor = labels) -> Iterator:
            for idx, x, bad in loader:
                failures.extend(f"{files[j]}: {reason}" for j, reason in bad)
                if x is not None:
                    yield x, labels[idx]

        yield name, batches(), len(loader)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from domainbed.inference.model_file import load_model
    from domainbed.inference.report import domain_metrics, format_table, predict_batches, reliability_figure

    try:
        if args.ece_bins < 1:
            raise UserError("--ece_bins must be a positive integer")
        device = resolve_device(args.device or "auto")
        model = load_model(args.model, device)
        failures: list[str] = []
        domains = dataset_domains(model, args) if args.dataset else folder_domains(model, args, failures)
        results: dict[str, dict[str, Any]] = {}
        for name, batches, n_batches in domains:
            logits, labels = predict_batches(model, batches, device, n_batches, desc=name)
            results[name] = domain_metrics(logits, labels, model.class_names, args.ece_bins)
    except UserError as err:
        print(f"evaluate: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.output_dir or f"evaluation_{Path(args.model).stem}")
    out.mkdir(parents=True, exist_ok=True)
    print(f"Model: {model.describe()}")
    print(f"Data: {args.dataset or args.data_dir}" + (f", split {args.split}" if args.dataset else ""))
    print(format_table(results, model.class_names, args.ece_bins))
    payload = {"model": str(args.model), "selection": model.selection, "data_dir": str(args.data_dir),
               "dataset": args.dataset, "split": args.split if args.dataset else "all", "ece_bins": args.ece_bins,
               "class_names": model.class_names, "domains": results, "unreadable_images": failures}
    (out / "metrics.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    figure = reliability_figure(results, out / "reliability.png", model.describe())
    if failures:
        print(f"warning: {len(failures)} unreadable images were left out:\n  " + "\n  ".join(failures), file=sys.stderr)
    print(f"Wrote {out / 'metrics.json'} and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
