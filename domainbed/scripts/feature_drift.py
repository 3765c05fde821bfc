"""How far each finished job's features moved from the pre-trained prior's, on its held-out domain.

    python -m domainbed.scripts.feature_drift --input_dir SWEEP_DIR --out drift.jsonl [--data_dir D]

For every finished job below ``SWEEP_DIR`` (a folder with ``done``), the featurizer in its
``model.pt`` (the last step) and the prior its hparams build (same backbone, the pretrained
weights, eval mode) read the job's test domain at the job's image size; one JSON line per job
gives the linear CKA and the mean squared distance of their pooled features (summed over
dimensions, averaged over images) with the job's hash, dataset, algorithm, test env, trial
seed, image size and the hparams its sweep fixed (what tells the arms apart). All of the
domain's images are read, or a fixed seeded subset of ``--max_images`` (2,000) when it has more.

Resumable: jobs already in ``--out`` are skipped. A job without ``model.pt`` is skipped and
counted; a job that cannot be measured is reported and counted (exit status 1). The measures
are in :mod:`domainbed.inference.feature_drift`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

from domainbed.inference.feature_drift import BN_MODES, FINAL_MODEL, MAX_IMAGES, DriftError, measure_job
from domainbed.lib.errors import UserError

DONE = "done"
JOB_FILES = ("args.json", "results.jsonl", DONE)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m domainbed.scripts.feature_drift", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_dir", required=True, help="a sweep folder (its job folders may sit at any depth)")
    p.add_argument("--out", required=True, help="the JSON-lines file to append to (jobs already in it are skipped)")
    p.add_argument("--data_dir", default=None, help="where the datasets are (default: each job's --data_dir)")
    p.add_argument("--max_images", type=int, default=MAX_IMAGES,
                   help="held-out images per job: all up to this, else a seeded subset of this many (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seeds the image subset and the batch order")
    p.add_argument("--bn", choices=BN_MODES, default="as_trained",
                   help="BatchNorm while measuring: as_trained (running statistics with freeze_bn, batch statistics "
                        "otherwise), or one of them for every job")
    p.add_argument("--batch_size", type=int, default=None,
                   help="images per forward pass (default: a training step's with batch statistics, else 64)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def job_folders(root: Path) -> Iterator[Path]:
    """Every job folder below ``root`` (itself included), in sorted order."""
    for folder, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if any(name in filenames for name in JOB_FILES):
            dirnames[:] = []  # a job's own sub-folders are not jobs
            yield Path(folder)


def measured_jobs(out: Path) -> set[str]:
    """Hashes of the jobs already in ``out``. A last line cut short (a kill mid-write) is
    dropped from the file, so that the next line starts on its own."""
    if not out.is_file():
        return set()
    text = out.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    complete = []
    for line in lines:
        try:
            complete.append(json.loads(line)["job"])
        except (ValueError, KeyError, TypeError):
            if line is lines[-1]:
                out.write_text("".join(lines[:-1]), encoding="utf-8")
                break
            raise UserError(f"{out} has a line that is not a drift record: {line[:80]!r}; "
                            "pass another --out or remove that line") from None
    return set(complete)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    root, out = Path(args.input_dir), Path(args.out)
    if not root.is_dir():
        raise UserError(f"--input_dir {root} is not a folder")
    if args.max_images < 0:
        raise UserError("--max_images must be >= 0 (0: every image)")
    jobs = list(job_folders(root))
    finished = [j for j in jobs if (j / DONE).is_file()]
    seen = measured_jobs(out)
    todo = [j for j in finished if j.name not in seen]
    no_model = [j for j in todo if not (j / FINAL_MODEL).is_file()]
    todo = [j for j in todo if (j / FINAL_MODEL).is_file()]
    out.parent.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    bar = tqdm(todo, desc="feature drift", unit="job", disable=args.no_progress, file=sys.stderr)
    for job in bar:
        bar.set_postfix_str(job.name[:8])
        try:
            drift = measure_job(job, data_dir=args.data_dir, max_images=args.max_images or None, seed=args.seed,
                                bn=args.bn, batch_size=args.batch_size, device=args.device)
        except DriftError as err:
            failed.append(str(err))
            tqdm.write(f"feature_drift: skipped {err}", file=sys.stderr)
            continue
        with out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(drift.to_json(), sort_keys=True) + "\n")
    bar.close()
    print(f"{len(jobs)} jobs under {root}: {len(finished)} finished, {len(finished) - len(todo) - len(no_model)} "
          f"already in {out}, {len(todo) - len(failed)} measured, {len(no_model)} without {FINAL_MODEL} (skipped), "
          f"{len(failed)} failed, {len(jobs) - len(finished)} not finished")
    for message in failed:
        print(f"  failed: {message}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UserError as err:
        print(f"feature_drift: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
