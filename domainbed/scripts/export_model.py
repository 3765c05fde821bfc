"""Export the model a selection rule picks: ``python -m domainbed.scripts.export_model``.

    python -m domainbed.scripts.export_model --input_dir SWEEP --dataset D --algorithm A --test_env E
        --selection training_domain|leave_one_out|test_domain --output FILE [--trial_seed T]

Applies the rule as ``collect_results`` does (same hparams, trial and step) and writes one
file with the weights and everything needed to use them (:mod:`domainbed.inference.model_file`);
``domainbed.load_model(FILE)`` reads it back. When the selected step's weights were not kept,
it says so and names the flag that keeps them.
"""

from __future__ import annotations

import argparse
import sys

from domainbed.lib.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from domainbed.inference.export import SELECTION_ALIASES
    from domainbed.results.selection import SELECTION_METHODS

    rules = sorted(set(SELECTION_METHODS) | set(SELECTION_ALIASES))
    parser = argparse.ArgumentParser(description="Export the model a selection rule picks in a sweep.")
    parser.add_argument("--input_dir", required=True, help="sweep folder (as for collect_results)")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--algorithm", required=True)
    parser.add_argument("--test_env", type=int, required=True, help="the held-out domain's index")
    parser.add_argument("--selection", required=True, choices=rules,
                        help="model-selection rule (test_domain = oracle: the last step)")
    parser.add_argument("--trial_seed", type=int, default=None, help="trial to export (default: the lowest present)")
    parser.add_argument("--output", required=True, help="model file to write (e.g. model_erm_env0.pt)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from domainbed.inference.export import export_model, select_checkpoint, selection_summary

    try:
        sel = select_checkpoint(args.input_dir, args.dataset, args.algorithm, args.test_env, args.selection,
                                args.trial_seed)
        weights = export_model(sel, args.output)
    except UserError as err:
        print(f"export_model: error: {err}", file=sys.stderr)
        return 2
    print(selection_summary(sel, weights))
    print(f"Wrote {args.output}; load it with domainbed.load_model({args.output!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
