"""Keep the weights that training-domain validation would select: ``model_best.pt``.

Training-domain validation (:class:`domainbed.results.selection.TrainingDomainValidation`)
picks, within a run, the checkpoint with the highest mean ``out`` accuracy over the
training domains (ties: the earliest). This keeper applies the same rule while training:
after each evaluation whose score beats every earlier one it replaces ``model_best.pt``
(the format of ``model.pt`` plus a ``"best"`` entry naming the step and score), so
``export_model`` finds the selected step's weights without ``--save_model_every_checkpoint``.

The file is written after the step's checkpoint, so the best score so far is derived on
resume from the records the checkpoint kept (nothing is added to the checkpoint). When
the last kept record is the best but the file was not yet replaced (a kill in between),
the restored weights are that step's and are saved then; when the file holds any other
step than the best kept record, it is removed with a warning (its step is no longer the
best one). An averaging algorithm (SWAD) reports its averaged model: at the end that model
replaces the file, marked ``"averaged": True``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from domainbed.training.integrity import DamagedFile, UnsafeFile, load_verified

BEST_MODEL = "model_best.pt"
SaveModel = Callable[[Path, dict[str, Any]], None]


def training_domain_score(record: Mapping[str, Any], test_envs: Sequence[int]) -> float:
    """Mean ``env{i}_out_acc`` over the envs not in ``test_envs`` (NaN values and missing
    envs left out, as the selection rule does); NaN when there is none."""
    values = []
    for key, value in record.items():
        if key.startswith("env") and key.endswith("_out_acc") and key[3:-8].isdigit():
            if int(key[3:-8]) not in test_envs and isinstance(value, (int, float)) and not math.isnan(value):
                values.append(float(value))
    return sum(values) / len(values) if values else float("nan")


def best_record(records: Sequence[Mapping[str, Any]], test_envs: Sequence[int]) -> tuple[int, float] | None:
    """``(step, score)`` of the best non-averaged record (earliest on ties), or None."""
    best: tuple[int, float] | None = None
    for record in records:
        if record.get("averaged"):
            continue
        score = training_domain_score(record, test_envs)
        if not math.isnan(score) and (best is None or score > best[1]):
            best = (int(record["step"]), score)
    return best


class BestModelKeeper:
    """Replaces ``out/model_best.pt`` whenever the training-domain validation score improves."""

    def __init__(self, out: Path, test_envs: Sequence[int], save: SaveModel, enabled: bool = True):
        self.path = out / BEST_MODEL
        self.test_envs = list(test_envs)
        self.save = save
        self.enabled = enabled
        self.step: int | None = None
        self.score = float("-inf")

    def resume(self, records: Sequence[Mapping[str, Any]], start: int) -> None:
        """Set the best score from the records kept on resume (steps before ``start``) and
        bring the file in line with it."""
        if not self.enabled:
            return
        best = best_record(records, self.test_envs)
        saved = self._saved()
        if best is None:
            self.step, self.score = None, float("-inf")
            if self.path.exists():
                self.path.unlink()  # from a run that restarted from scratch
            return
        self.step, self.score = best
        if saved is not None and not saved.get("averaged") and saved.get("step") == best[0]:
            return
        if best[0] == start - 1:
            # Killed after the checkpoint, before this file: the restored weights are that step's.
            self._write(best[0], best[1])
            return
        if self.path.exists():
            self.path.unlink()
            if saved is None or not saved.get("averaged"):  # an averaged model is simply made again at the end
                print(f"warning: {BEST_MODEL} did not hold the best step kept by the resumed checkpoint "
                      f"({best[0]}); it was removed, and the next step that improves on it is kept", file=sys.stderr)

    def offer(self, step: int, evals: Mapping[str, Any]) -> bool:
        """Keep the weights of ``step`` when its score beats every earlier one; True when kept."""
        if not self.enabled:
            return False
        score = training_domain_score(evals, self.test_envs)
        if math.isnan(score) or score <= self.score:
            return False
        self.step, self.score = step, score
        self._write(step, score)
        return True

    def keep_averaged(self, step: int, evals: Mapping[str, Any]) -> None:
        """The averaged model of an averaging algorithm replaces the file at the end of training."""
        if self.enabled:
            self._write(step, training_domain_score(evals, self.test_envs), averaged=True)

    def _write(self, step: int, score: float, averaged: bool = False) -> None:
        self.save(self.path, {"step": step, "val_acc": score, "averaged": averaged})

    def _saved(self) -> dict[str, Any] | None:
        """The ``"best"`` entry of the file, or None when there is no intact file."""
        if not self.path.exists():
            return None
        try:
            best = load_verified(self.path).get("best")
        except (DamagedFile, UnsafeFile, AttributeError):
            return None
        return best if isinstance(best, dict) else None
