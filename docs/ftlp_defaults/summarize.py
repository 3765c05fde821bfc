"""Summarise the FT-LP defaults study (docs/ftlp_defaults/run.sh) as a markdown table.

Score of a run: DomainBed's training-domain validation, the highest mean `out` accuracy of
the training domains over the run's checkpoints. Test-domain numbers are printed for the
record only; the choice does not read them.

    python docs/ftlp_defaults/summarize.py [RECORDS_DIR]
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    root = Path(argv[0] if argv else Path(__file__).parent / "records")
    runs: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for job in sorted(p for p in root.iterdir() if (p / "done").exists()):
        records = [json.loads(line) for line in (job / "results.jsonl").read_text().splitlines()]
        h, args = records[0]["hparams"], records[0]["args"]
        train_envs = [e for e in range(3) if e not in args["test_envs"]]
        scores = [statistics.mean(r[f"env{e}_out_acc"] for e in train_envs) for r in records]
        best = max(range(len(scores)), key=scores.__getitem__)
        test = records[best][f"env{args['test_envs'][0]}_in_acc"]
        arm = (args["algorithm"], h.get("ftlp_posterior", "—"), h.get("ftlp_lambda", "—"), h.get("ftlp_layers", "—"))
        runs[arm].append((scores[best], test))
    print("| algorithm | posterior | λ | layers | trials | train-domain val (%) | test -90% (%, not used) |")
    print("|---|---|---|---|---|---|---|")
    for arm, values in sorted(runs.items(), key=lambda kv: -statistics.mean(v for v, _ in kv[1])):
        val = statistics.mean(v for v, _ in values)
        test = statistics.mean(t for _, t in values)
        print(f"| {' | '.join(str(a) for a in arm)} | {len(values)} | {100 * val:.1f} | {100 * test:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
