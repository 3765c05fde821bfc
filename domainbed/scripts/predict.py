"""Predict classes of image files with an exported model: ``python -m domainbed.scripts.predict``.

    python -m domainbed.scripts.predict --model FILE --images DIR_OR_FILES ... --output preds.csv [--top_k K]

Writes one CSV row per readable image: its path, the predicted class and its probability,
and with ``--top_k K`` the K most probable classes with theirs. Images are batched and run
on the GPU when there is one. Files that cannot be read as images are listed on stderr and
left out; the others are still predicted (exit status 1 when any was left out, 0 otherwise).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

from domainbed.lib.errors import UserError
from domainbed.training.arguments import resolve_device


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Predicted class and probability per image, from an exported model.")
    parser.add_argument("--model", required=True, help="file written by domainbed.scripts.export_model")
    parser.add_argument("--images", required=True, nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--output", required=True, help="CSV file to write")
    parser.add_argument("--top_k", type=int, default=1, help="also list the K most probable classes (default 1)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=0, help="image-decoding worker processes")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    return parser


def predict_files(model: torch.nn.Module, files: list[Path], transform, device: torch.device, batch_size: int,
                  top_k: int, num_workers: int = 0) -> tuple[list[list[str]], list[str]]:
    """CSV rows (path, class, probability, then the top-k pairs) of the readable ``files``,
    in their order, and one ``path: reason`` line per unreadable file."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from domainbed.inference.images import ImageFiles, collate

    names = model.class_names
    k = min(top_k, len(names))
    loader = DataLoader(ImageFiles(files, transform), batch_size=batch_size, shuffle=False, collate_fn=collate,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    rows, failures = [], []
    with torch.inference_mode():
        for idx, x, bad in tqdm(loader, desc="predict", unit="batch", file=sys.stderr, disable=None, leave=False):
            failures += [f"{files[j]}: {reason}" for j, reason in bad]
            if x is None:
                continue
            probs = model(x.to(device, non_blocking=True)).float().softmax(1).cpu()
            top_p, top_i = probs.topk(k, dim=1)
            for j, ps, cs in zip(idx, top_p.tolist(), top_i.tolist()):
                row = [str(files[j]), names[cs[0]], f"{ps[0]:.6f}"]
                if top_k > 1:
                    for p, c in zip(ps, cs):
                        row += [names[c], f"{p:.6f}"]
                rows.append(row)
    return rows, failures


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from domainbed.inference.images import image_transform, list_images
    from domainbed.inference.model_file import load_model

    try:
        if args.top_k < 1:
            raise UserError("--top_k must be at least 1")
        device = resolve_device(args.device or "auto")
        model = load_model(args.model, device)
        files = list_images(args.images)
        if not files:
            raise UserError(f"no image files in {' '.join(args.images)}")
        transform = image_transform(model.input_shape, model.normalisation)
    except UserError as err:
        print(f"predict: error: {err}", file=sys.stderr)
        return 2
    rows, failures = predict_files(model, files, transform, device, args.batch_size, args.top_k, args.num_workers)
    header = ["path", "class", "probability"]
    if args.top_k > 1:
        for r in range(1, min(args.top_k, len(model.class_names)) + 1):
            header += [f"top{r}_class", f"top{r}_probability"]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    print(f"Predicted {len(rows)} images with {model.describe()}; wrote {args.output}")
    if failures:
        print(f"predict: warning: {len(failures)} of {len(files)} files could not be read as images and were left "
              "out:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
