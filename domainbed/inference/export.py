"""The model a selection rule picks, written as one self-describing file.

:func:`select_checkpoint` applies the rule exactly as ``collect_results`` does (the same
records, prepared the same way, the same :class:`~domainbed.results.selection.SelectionMethod`),
so the exported model is the one behind the table's cell for that trial. :func:`weights_file`
finds the selected step's weights in the run folder: ``model_best.pt`` (the step
training-domain validation selects, kept during training), ``model_step{N}.pt`` (with
``--save_model_every_checkpoint``) or ``model.pt`` (the last step, or SWAD's averaged
model). :func:`export_model` writes the file :mod:`.model_file` describes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainbed.inference.model_file import FORMAT, FORMAT_VERSION, backbone_input_of
from domainbed.lib.errors import UserError
from domainbed.training.best_model import BEST_MODEL

# Command-line names of the rules; test_domain is the issue tracker's name of the oracle.
SELECTION_ALIASES = {"test_domain": "oracle"}
FINAL_MODEL = "model.pt"
EVERY_CHECKPOINT_FLAG = "--save_model_every_checkpoint"


class WeightsNotKept(UserError):
    """The selected step's weights are not in the run folder."""


@dataclass(frozen=True)
class SelectedCheckpoint:
    """The run and checkpoint a rule picked for one (dataset, algorithm, test env, trial)."""

    rule: str
    title: str
    dataset: str
    algorithm: str
    test_env: int
    trial_seed: int
    hparams_seed: int
    output_dir: Path
    step: int
    averaged: bool
    val_acc: float
    test_acc: float
    record: dict[str, Any]
    last_step: int


def _rule(selection: str) -> Any:
    from domainbed.model_selection import get_selection_method

    return get_selection_method(SELECTION_ALIASES.get(selection, selection))


def select_checkpoint(input_dir: str | os.PathLike, dataset: str, algorithm: str, test_env: int, selection: str,
                      trial_seed: int | None = None) -> SelectedCheckpoint:
    """The checkpoint ``selection`` picks for ``(dataset, algorithm, test_env)``; with no
    ``trial_seed``, that of the lowest trial seed present."""
    from domainbed.model_selection import prepare_records
    from domainbed.results.records import load_records

    method = _rule(selection)
    load = load_records(input_dir)
    if load.df.empty:
        raise UserError(f"no finished runs with records under {input_dir}")
    prepared = prepare_records(load.df)
    selected = method.select(prepared)
    group = selected[(selected["dataset"] == dataset) & (selected["algorithm"] == algorithm)
                     & (selected["test_env"] == test_env)] if not selected.empty else selected
    if group.empty:
        present = sorted({(d, a, int(e)) for d, a, e in zip(selected["dataset"], selected["algorithm"], selected["test_env"])})
        shown = "; ".join(f"{d} {a} test env {e}" for d, a, e in present) or "none"
        if method.name == "leave_one_out" and not (prepared.df["n_test_envs"] == 2).any():
            shown += "; the sweep has no runs with two test envs, which this rule needs (launch it without --single_test_envs)"
        raise UserError(f"{method.title} selects no run for {dataset} {algorithm} test env {test_env} under {input_dir}"
                        f" (it selects: {shown})")
    trials = sorted(int(t) for t in group["trial_seed"])
    if trial_seed is None:
        trial_seed = trials[0]
    elif trial_seed not in trials:
        raise UserError(f"no selected run with trial seed {trial_seed}; trial seeds: {', '.join(map(str, trials))}")
    row = group[group["trial_seed"] == trial_seed].iloc[0]
    df = prepared.df
    run = df[df["output_dir"] == row["output_dir"]]
    match = run[(run["step"] == row["step"]) & (run["averaged"] == row["averaged"])]
    record = _plain(match.iloc[-1].to_dict())
    last_step = int(run.loc[~run["averaged"].astype(bool), "step"].max()) if (~run["averaged"].astype(bool)).any() else int(row["step"])
    return SelectedCheckpoint(
        rule=method.name, title=method.title, dataset=dataset, algorithm=algorithm, test_env=int(test_env),
        trial_seed=int(trial_seed), hparams_seed=int(row["hparams_seed"]), output_dir=Path(row["output_dir"]),
        step=int(row["step"]), averaged=bool(row["averaged"]), val_acc=float(row["val_acc"]),
        test_acc=float(row["test_acc"]), record=record, last_step=last_step,
    )


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """A record row as JSON values (what ``weights_only`` loading accepts); NaN columns of
    other runs' keys dropped."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, float) and value != value:
            continue
        if isinstance(value, tuple):
            value = list(value)
        try:
            out[key] = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            out[key] = str(value)
    return out


def weights_file(sel: SelectedCheckpoint) -> Path:
    """The file in the run folder holding the selected checkpoint's weights; :class:`WeightsNotKept` when none does."""
    from domainbed.training.integrity import load_verified

    folder = sel.output_dir
    final = folder / FINAL_MODEL
    if sel.averaged:
        if final.is_file():
            return final
    else:
        best = folder / BEST_MODEL
        if best.is_file():
            kept = load_verified(best).get("best") or {}
            if not kept.get("averaged") and kept.get("step") == sel.step:
                return best
        step_file = folder / f"model_step{sel.step}.pt"
        if step_file.is_file():
            return step_file
        if sel.step == sel.last_step and final.is_file() and not _final_is_averaged(folder):
            return final
    what = "the averaged model" if sel.averaged else f"step {sel.step}"
    raise WeightsNotKept(
        f"{sel.title} selected {what} of {folder} (trial {sel.trial_seed}, hparams seed {sel.hparams_seed}), whose "
        f"weights were not kept ({FINAL_MODEL} is the last step, {sel.last_step}; {BEST_MODEL} holds "
        f"training-domain validation's step); rerun that job with {EVERY_CHECKPOINT_FLAG} to keep every checkpoint's weights"
    )


def _final_is_averaged(folder: Path) -> bool:
    from domainbed.training.atomic_files import read_jsonl

    return any(r.get("averaged") for r in read_jsonl(folder / "results.jsonl"))


def _class_names(args: dict[str, Any], hparams: dict[str, Any], num_classes: int) -> tuple[list[str], list[str] | None]:
    """Class and domain names of the run's dataset (class indices as names when it cannot be read)."""
    import sys

    from domainbed.datasets import build_dataset

    try:
        data = build_dataset(args["dataset"], args.get("data_dir"), list(args.get("test_envs", [])), hparams)
    except (UserError, OSError) as err:
        print(f"warning: could not read dataset {args['dataset']} for its class names ({err}); "
              "classes are named by index", file=sys.stderr)
        return [str(i) for i in range(num_classes)], None
    names = getattr(data, "classes", None) or getattr(data, "CLASSES", None) or range(num_classes)
    return [str(n) for n in names], list(data.environments)


def _provenance(sel: SelectedCheckpoint) -> Any:
    """What the run recorded about its code (a ``provenance`` record key or ``provenance.json``), else None."""
    if sel.record.get("provenance") is not None:
        return sel.record["provenance"]
    path = sel.output_dir / "provenance.json"
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
    return None


def build_model_state(sel: SelectedCheckpoint, weights: Path) -> dict[str, Any]:
    """The exported file's contents for the selected checkpoint, whose weights are in ``weights``."""
    import torch

    from domainbed.algorithms import get_algorithm_class
    from domainbed.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
    from domainbed.training.integrity import load_verified
    from domainbed.version import __version__

    saved = load_verified(weights)
    args, hparams = dict(saved["args"]), dict(saved["hparams"])
    input_shape, num_classes = [int(v) for v in saved["input_shape"]], int(saved["num_classes"])
    num_domains = int(saved["num_domains"])
    # With the run's own hparams: the pretrained weights give the backbone's input scaling.
    alg = get_algorithm_class(sel.algorithm)(tuple(input_shape), num_classes, num_domains, hparams)
    weights_state = saved["model_dict"]
    try:
        template = alg.build_predictor()
    except NotImplementedError:
        template = None
    if template is not None and set(weights_state) == set(template.state_dict()):
        template.load_state_dict(weights_state)  # an averaged predictor (SWAD's model.pt)
        kind, state = "predictor", template.state_dict()
    else:
        alg.load_state_dict(weights_state)
        if template is None:
            kind, state = "algorithm", alg.state_dict()
        else:
            kind, state = "predictor", alg.build_predictor().state_dict()
    class_names, environments = _class_names(args, hparams, num_classes)
    normalisation = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)} if input_shape[0] == 3 else None
    selection = {
        "rule": sel.rule, "title": sel.title, "test_env": sel.test_env, "trial_seed": sel.trial_seed,
        "hparams_seed": sel.hparams_seed, "step": sel.step, "averaged": sel.averaged, "val_acc": sel.val_acc,
        "test_acc": sel.test_acc, "output_dir": str(sel.output_dir), "weights_file": weights.name,
        "record": {k: v for k, v in sel.record.items() if k not in ("hparams", "args")},
    }
    if environments is not None:
        selection["test_env_name"] = environments[sel.test_env]
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "domainbed_version": __version__, "kind": kind,
        "algorithm": sel.algorithm, "dataset": sel.dataset, "hparams": hparams, "args": args,
        "input_shape": input_shape, "num_classes": num_classes, "num_domains": num_domains,
        "class_names": class_names, "environments": environments, "normalisation": normalisation,
        "backbone_input": backbone_input_of(alg.featurizer), "selection": selection, "provenance": _provenance(sel),
        "state_dict": {k: v.detach().cpu() for k, v in state.items() if isinstance(v, torch.Tensor)},
    }


def export_model(sel: SelectedCheckpoint, output: str | os.PathLike) -> Path:
    """Write the selected checkpoint's model file to ``output`` (verified, atomically); returns the weights file read."""
    from domainbed.training.atomic_files import save_verified

    weights = weights_file(sel)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_verified(build_model_state(sel, weights), output)
    return weights


def selection_summary(sel: SelectedCheckpoint, weights: Path) -> str:
    what = "the averaged model" if sel.averaged else f"step {sel.step}"
    return (f"{sel.title}: {sel.algorithm} on {sel.dataset}, test env {sel.test_env}, trial {sel.trial_seed} -> "
            f"hparams seed {sel.hparams_seed}, {what} (validation {sel.val_acc:.4f}, test-env in accuracy "
            f"{sel.test_acc:.4f}); weights from {weights}")


__all__ = ["SELECTION_ALIASES", "SelectedCheckpoint", "WeightsNotKept", "build_model_state", "export_model",
           "select_checkpoint", "selection_summary", "weights_file"]
