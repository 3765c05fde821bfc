"""Rank the hparam seeds of one setting: ``python -m domainbed.scripts.list_top_hparams``.

    python -m domainbed.scripts.list_top_hparams --input_dir SWEEP_DIR --dataset PACS \\
        --algorithm ERM_FTLP --test_env 0 [--selection training_domain oracle] [--top 5]

For each selection rule and trial seed, lists the runs best first: validation score,
test accuracy, chosen step and the hparams that differ between the runs listed (a full
hparams dict is a few hundred characters); those every listed run shares are printed once
above the rankings. The winning configuration is the shared hparams plus its row's, to
read off or reuse (``--hparams '<json>'``). Call :func:`list_top_hparams` in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import textwrap
from typing import Any, Mapping, Sequence

import pandas as pd

from domainbed.model_selection import (
    DEFAULT_SELECTION,
    SELECTION_METHODS,
    get_selection_method,
    prepare_records,
    reports_averaged_model,
)
from domainbed.results.records import load_records
from domainbed.results.tables import env_names, format_grid, format_number


def _check_choice(df: pd.DataFrame, column: str, value: object, flag: str) -> pd.DataFrame:
    part = df[df[column] == value]
    if part.empty:
        known = ", ".join(map(str, sorted(df[column].dropna().unique())))
        raise ValueError(f"no finished runs with {flag} {value!r} in this sweep; found: {known or 'none'}")
    return part


def ranked_runs(
    records: pd.DataFrame, method: str, dataset: str, algorithm: str, test_env: int
) -> pd.DataFrame:
    """Runs of one (dataset, algorithm, test_env) ranked by the rule's score within each trial seed."""
    scores = get_selection_method(method).run_scores(records)
    mask = (scores["dataset"] == dataset) & (scores["algorithm"] == algorithm) & (scores["test_env"] == test_env)
    part = scores[mask]
    part = part.sort_values(["trial_seed", "val_acc", "hparams_seed"], ascending=[True, False, True], kind="mergesort")
    return part.assign(rank=part.groupby("trial_seed").cumcount() + 1).reset_index(drop=True)


def _value_key(value: Any) -> str:
    """A comparable text of an hparam value (lists and dicts included)."""
    return json.dumps(value, sort_keys=True, default=str)


def split_hparams(configs: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """``(shared, varying)`` over ``configs``: the hparams with one value in every config, and
    the sorted names of those whose value differs or that some config lacks."""
    names = sorted({name for config in configs for name in config})
    shared: dict[str, Any] = {}
    varying = []
    for name in names:
        values = {_value_key(config[name]) if name in config else "<missing>" for config in configs}
        if len(values) == 1 and name in configs[0]:
            shared[name] = configs[0][name]
        else:
            varying.append(name)
    return shared, varying


def _shared_line(shared: Mapping[str, Any], width: int = 100) -> str:
    if not shared:
        return "hparams shared by every run listed: none"
    text = "hparams shared by every run listed: " + ", ".join(f"{k}={_value_key(v)}" for k, v in shared.items())
    return textwrap.fill(text, width=width, subsequent_indent="    ", break_on_hyphens=False)


def list_top_hparams(
    input_dir: str | os.PathLike[str],
    dataset: str,
    algorithm: str,
    test_env: int,
    selection: Sequence[str] = DEFAULT_SELECTION,
    top: int | None = None,
) -> str:
    """The ranking as text, one block per selection rule and trial seed."""
    load = load_records(input_dir)
    df = load.df
    df = _check_choice(df, "dataset", dataset, "--dataset")
    df = _check_choice(df, "algorithm", algorithm, "--algorithm")
    _check_choice(df, "test_env", test_env, "--test_env")
    prepared = prepare_records(df, reports_averaged_model)
    n_envs = int(prepared.df["n_envs"].max())
    from domainbed.datasets import known_environment_names  # torch and every dataset: only when run

    names = env_names(dataset, n_envs, known_environment_names([dataset]).get(dataset))
    env_label = names[test_env] if test_env < n_envs else str(test_env)
    out = [load.summarise(), *prepared.notes(), "", f"{dataset} / {algorithm} / test env {test_env} ({env_label})"]
    hparams = df.drop_duplicates("output_dir").set_index("output_dir")["hparams"]
    rankings = {name: ranked_runs(prepared, name, dataset, algorithm, test_env) for name in selection}
    if top is not None:
        rankings = {name: ranked.groupby("trial_seed").head(top) for name, ranked in rankings.items()}
    listed = sorted({d for ranked in rankings.values() for d in ranked["output_dir"]})
    shared, varying = split_hparams([hparams.get(d) or {} for d in listed])
    if listed:
        out += ["", _shared_line(shared)]
    for name, ranked in rankings.items():
        method = get_selection_method(name)
        out += ["", f"== {method.title} =="]
        if ranked.empty:
            out.append("no runs can be scored under this rule")
            continue
        for trial, part in ranked.groupby("trial_seed"):
            body = [
                [
                    str(r["rank"]), str(r["hparams_seed"]), format_number(r["val_acc"]), format_number(r["test_acc"]),
                    f"{r['step']} (averaged)" if r["averaged"] else str(r["step"]),
                    json.dumps({k: (hparams.get(r["output_dir"]) or {}).get(k, "<missing>") for k in varying},
                               sort_keys=True, default=str),
                ]
                for r in part.to_dict("records")
            ]
            header = ["rank", "hparams_seed", "val_acc %", "test_acc %", "step", "hparams that differ"]
            out += [f"trial_seed {trial}:", format_grid(header, body)]
    return "\n".join(out) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Rank hparam seeds by validation score under each selection rule.")
    parser.add_argument("--input_dir", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--algorithm", required=True)
    parser.add_argument("--test_env", type=int, required=True)
    parser.add_argument("--selection", nargs="+", default=list(DEFAULT_SELECTION), choices=list(SELECTION_METHODS))
    parser.add_argument("--top", type=int, default=None, help="show only the best K runs per trial seed")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        print(list_top_hparams(args.input_dir, args.dataset, args.algorithm, args.test_env, args.selection, args.top), end="")
    except ValueError as err:
        raise SystemExit(f"list_top_hparams: {err}") from None


if __name__ == "__main__":
    main()
