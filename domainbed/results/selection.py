"""Model selection rules: which hparam seed and checkpoint stand for an algorithm (docs/design.md §9).

The rules of DomainBed's protocol (arXiv 2007.01434), and ERM++'s auto-LR rule
(arXiv 2304.01973), on the records frame of :mod:`domainbed.results.records`. Records are
grouped by (dataset, algorithm, test env, trial seed). Within one job (a "run", one hparam
seed), a rule picks a checkpoint and gives it a validation score; the run with the best
score wins (ties: lowest hparams seed). The number reported is the test env's ``in``
accuracy at the chosen checkpoint (for the auto-LR rule, the full-data model's).

A run that wrote an ``"averaged": true`` record (SWAD's final averaged model) is
represented by that record alone, as SWAD reports itself. Which algorithms *should* have
written one is not known here (the results package knows no algorithm): callers pass
``averaged_model(name) -> bool``, and :func:`prepare_records` lists the runs of such
algorithms that lack the record (killed before averaging), so reports can say so.
:func:`domainbed.model_selection.prepare_records` passes what the algorithms declared.

Each rule is a class with ``run_scores`` (one row per run: its chosen checkpoint and
score) and ``select`` (one row per group: the winning run), registered under the short
name used on command lines with ``@register_selection_method``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from domainbed.lib.registry import Registry
from domainbed.results.query import Q
from domainbed.results.records import env_indices, records_frame

GROUP_KEYS = ["dataset", "algorithm", "test_env", "trial_seed"]
RUN_COLUMNS = GROUP_KEYS + ["hparams_seed", "output_dir", "step", "averaged", "n_envs"]
RESULT_COLUMNS = RUN_COLUMNS + ["val_acc", "test_acc"]

# Checkpoint key of an averaged-model record: SWAD stops at a different step in every
# run, so the averaged models of a test run and its pair runs are matched as "the final
# averaged model", not by step.
AVERAGED_CKPT = -1


AveragedModel = Callable[[str], bool]


def _no_averaged_model(algorithm: str) -> bool:
    return False


@dataclass
class PreparedRecords:
    """Records ready for selection plus the runs that should have, but lack, an averaged record."""

    df: pd.DataFrame
    averaged_fallback_dirs: list[str]

    def notes(self) -> list[str]:
        if not self.averaged_fallback_dirs:
            return []
        shown = ", ".join(self.averaged_fallback_dirs[:3])
        more = ", ..." if len(self.averaged_fallback_dirs) > 3 else ""
        return [
            f"Note: {len(self.averaged_fallback_dirs)} runs of averaging algorithms have no averaged-model record; "
            f"their ordinary checkpoints were used instead ({shown}{more})."
        ]


def n_envs_of(df: pd.DataFrame) -> pd.Series:
    """Number of environments per dataset: one more than the highest env index with an accuracy."""
    counts: dict[str, int] = {}
    for dataset, part in df.groupby("dataset", sort=False):
        present = [i for i in env_indices(part.columns) if part[f"env{i}_in_acc"].notna().any()]
        counts[dataset] = max(present) + 1 if present else 0
    return df["dataset"].map(counts).astype("int64")


def prepare_records(
    records: pd.DataFrame | PreparedRecords, averaged_model: AveragedModel | None = None
) -> PreparedRecords:
    """Keep only the averaged record of runs that have one; add ``ckpt`` and ``n_envs``.

    ``averaged_model(algorithm)`` says which algorithms report an averaged model; their
    runs without an averaged record are listed in ``averaged_fallback_dirs`` (none when it is
    not given: selection itself does not depend on it). Idempotent: prepared records pass
    through unchanged.
    """
    averaged_model = averaged_model or _no_averaged_model
    if isinstance(records, PreparedRecords):
        return records
    df = records.copy()
    if df.empty:
        df["ckpt"] = pd.Series(dtype="int64")
        df["n_envs"] = pd.Series(dtype="int64")
        return PreparedRecords(df, [])
    run_has_avg = df.groupby("output_dir")["averaged"].any()
    has_avg = df["output_dir"].map(run_has_avg).astype(bool)
    df = df[~has_avg | df["averaged"]]
    # Of several averaged records in one run (should not happen) the last one counts.
    df = df[~(df["averaged"] & df.duplicated(["output_dir", "averaged"], keep="last"))]
    runs = df.drop_duplicates("output_dir")
    fallback = runs[runs["algorithm"].map(averaged_model).astype(bool) & ~runs["output_dir"].map(run_has_avg).astype(bool)]
    df = df.assign(
        ckpt=np.where(df["averaged"], AVERAGED_CKPT, df["step"]).astype("int64"),
        n_envs=n_envs_of(df),
    )
    return PreparedRecords(df.reset_index(drop=True), sorted(fallback["output_dir"].tolist()))


def _acc(df: pd.DataFrame, split: str, env: np.ndarray, prefix: str = "") -> np.ndarray:
    """``{prefix}env{env[r]}_{split}_acc`` of each row r (NaN where absent)."""
    out = np.full(len(df), np.nan)
    for i in np.unique(env):
        col = f"{prefix}env{i}_{split}_acc"
        if col in df.columns:
            rows = env == i
            out[rows] = df.loc[rows, col].to_numpy(dtype=float)
    return out


def heldout_env_accuracy(df: pd.DataFrame, split: str = "in") -> np.ndarray:
    """Each single-test-env record's test-env accuracy on ``split`` (NaN for other records)."""
    single = (df["n_test_envs"] == 1).to_numpy()
    env = np.where(single, df["test_env"].fillna(-1).to_numpy(dtype="int64"), -1)
    return _acc(df, split, env)


def training_domain_accuracy(df: pd.DataFrame) -> np.ndarray:
    """Mean ``out`` accuracy over the envs of each record that are not test envs."""
    return _training_domain_out_mean(df)


def _training_domain_out_mean(df: pd.DataFrame) -> np.ndarray:
    """Mean ``out`` accuracy over the envs of each record that are not test envs."""
    total = np.zeros(len(df))
    count = np.zeros(len(df))
    test_sets = df["test_envs"].tolist()
    for i in env_indices(df.columns):
        col = f"env{i}_out_acc"
        if col not in df.columns:
            continue
        vals = df[col].to_numpy(dtype=float)
        use = ~np.isnan(vals) & np.array([i not in t for t in test_sets], dtype=bool)
        total[use] += vals[use]
        count[use] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in RESULT_COLUMNS})


def _finish(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.dropna(subset=["val_acc", "test_acc"])
    if frame.empty:
        return _empty()
    frame = frame[RESULT_COLUMNS].copy()
    frame["test_env"] = frame["test_env"].astype("int64")
    return frame.reset_index(drop=True)


SELECTION_METHODS: Registry["SelectionMethod"] = Registry("selection method")
# The rules reports use when none are named, in the order their tables are printed.
DEFAULT_SELECTION: tuple[str, ...] = ("training_domain", "leave_one_out", "oracle")


class SelectionMethod:
    """A model-selection rule. Subclasses set ``name`` and ``title`` and implement :meth:`_scores`."""

    name: str = ""
    title: str = ""

    def _scores(self, df: pd.DataFrame) -> pd.DataFrame:
        """Every candidate checkpoint with ``val_acc`` and ``test_acc`` (RESULT_COLUMNS + ckpt)."""
        raise NotImplementedError

    def run_scores(self, records: pd.DataFrame | PreparedRecords) -> pd.DataFrame:
        """One row per run: the checkpoint this rule picks, its score and test accuracy."""
        df = prepare_records(records).df
        if df.empty:
            return _empty()
        cands = self._scores(df)
        if cands.empty:
            return _empty()
        # Best score first; ties go to the earliest checkpoint.
        cands = cands.sort_values(["val_acc", "ckpt"], ascending=[False, True], kind="mergesort")
        return _finish(cands.drop_duplicates("output_dir", keep="first"))

    def select(self, records: pd.DataFrame | PreparedRecords) -> pd.DataFrame:
        """One row per (dataset, algorithm, test_env, trial_seed): the winning run."""
        runs = self.run_scores(records)
        if runs.empty:
            return runs
        runs = runs.sort_values(["val_acc", "hparams_seed"], ascending=[False, True], kind="mergesort")
        best = runs.drop_duplicates(GROUP_KEYS, keep="first")
        return best.sort_values(GROUP_KEYS).reset_index(drop=True)

    # ------------------------------------------------------------------ DomainBed's class API
    # For scripts written against DomainBed: class methods on a Q (or list) of record dicts,
    # e.g. one group of DomainBed's reporting.get_grouped_records. They run the rule above,
    # so their numbers are collect_results' numbers; a rule of the user's own may instead
    # override run_acc alone, as in DomainBed.

    @classmethod
    def run_acc(cls, run_records: Iterable[dict[str, Any]]) -> dict[str, float] | None:
        """``{"val_acc", "test_acc"}`` of the checkpoint this rule picks among the records of
        one run (one hparams seed of one group, its pair runs included), or None when the
        rule cannot score it."""
        runs = cls().run_scores(records_frame(run_records))
        if runs.empty:
            return None
        best = runs.sort_values(["val_acc", "hparams_seed"], ascending=[False, True], kind="mergesort").iloc[0]
        return {"val_acc": float(best["val_acc"]), "test_acc": float(best["test_acc"])}

    @classmethod
    def hparams_accs(cls, records: Iterable[dict[str, Any]]) -> Q:
        """``(run_acc, run_records)`` of every hparams seed the rule can score, in the records of
        one (dataset, algorithm, test env, trial seed) group: best ``val_acc`` first, ties to
        the lowest hparams seed (as :meth:`select`)."""
        scored = (
            Q(records)
            .group("args.hparams_seed")
            .map(lambda _seed, run_records: (cls.run_acc(run_records), run_records))
            .filter(lambda pair: pair[0] is not None)
        )
        return scored.sorted(key=lambda pair: -pair[0]["val_acc"])

    @classmethod
    def sweep_acc(cls, records: Iterable[dict[str, Any]]) -> float | None:
        """The test accuracy of the best hparams seed of one group (:meth:`hparams_accs`), or None."""
        accs = cls.hparams_accs(records)
        return accs[0][0]["test_acc"] if len(accs) else None


def register_selection_method(cls: type[SelectionMethod]) -> type[SelectionMethod]:
    """Class decorator: register an instance of the rule under its ``name``; duplicates raise."""
    SELECTION_METHODS.register(cls.name)(cls())
    return cls


@register_selection_method
class TrainingDomainValidation(SelectionMethod):
    """The checkpoint with the best mean ``out`` accuracy over the training envs."""

    name = "training_domain"
    title = "training-domain validation"

    def _scores(self, df: pd.DataFrame) -> pd.DataFrame:
        single = df[df["n_test_envs"] == 1].reset_index(drop=True)
        env = single["test_env"].to_numpy(dtype="int64")
        return single.assign(val_acc=_training_domain_out_mean(single), test_acc=_acc(single, "in", env))


@register_selection_method
class OracleSelection(SelectionMethod):
    """The last checkpoint (no early stopping), scored by the test env's ``out`` accuracy."""

    name = "oracle"
    title = "test-domain validation (oracle)"

    def _scores(self, df: pd.DataFrame) -> pd.DataFrame:
        single = df[df["n_test_envs"] == 1]
        # Averaged records sort last, so a run that has one is represented by it.
        order = single.assign(_last=single["averaged"].astype(int))
        last = order.sort_values(["_last", "step", "record_index"], kind="mergesort").drop_duplicates(
            "output_dir", keep="last"
        )
        last = last.drop(columns="_last").reset_index(drop=True)
        env = last["test_env"].to_numpy(dtype="int64")
        return last.assign(val_acc=_acc(last, "out", env), test_acc=_acc(last, "in", env))


@register_selection_method
class LeaveOneDomainOut(SelectionMethod):
    """Validation on the held-out training env of the runs that left out two envs.

    For test env t, at each checkpoint, the score is the mean over the other envs v of
    env v's ``in`` accuracy in the run (same hparams and trial seed) that left out
    {t, v}; a checkpoint missing any such run is skipped. Nothing is returned when the
    sweep has no runs with two test envs.
    """

    name = "leave_one_out"
    title = "leave-one-domain-out validation"

    def _scores(self, df: pd.DataFrame) -> pd.DataFrame:
        pairs = df[df["n_test_envs"] == 2]
        if pairs.empty:
            return pd.DataFrame()
        key = ["dataset", "algorithm", "trial_seed", "hparams_seed", "ckpt"]
        first = pairs["test_envs"].map(lambda t: t[0]).to_numpy(dtype="int64")
        second = pairs["test_envs"].map(lambda t: t[1]).to_numpy(dtype="int64")
        # Each pair run {a, b} validates test env a on env b and test env b on env a.
        val = pd.concat(
            [
                pairs[key].assign(test_env=first, v=second, val=_acc(pairs, "in", second)),
                pairs[key].assign(test_env=second, v=first, val=_acc(pairs, "in", first)),
            ]
        ).dropna(subset=["val"])
        agg = val.groupby(key + ["test_env"], as_index=False).agg(val_acc=("val", "mean"), n_v=("v", "nunique"))
        single = df[df["n_test_envs"] == 1].assign(test_env=lambda d: d["test_env"].astype("int64"))
        merged = single.merge(agg, on=key + ["test_env"], how="inner")
        merged = merged[merged["n_v"] == merged["n_envs"] - 1].reset_index(drop=True)
        env = merged["test_env"].to_numpy(dtype="int64")
        return merged.assign(test_acc=_acc(merged, "in", env))


@register_selection_method
class TrainingDomainAutoLR(SelectionMethod):
    """ERM++'s auto-LR protocol (arXiv 2304.01973), DomainBed's ``collect_results --auto_lr``.

    An auto-LR job trains twice in one folder: first with the usual held-out ``out``
    splits (records with ``env{i}_out_acc``), then on the full data of the training domains
    with the schedule found in the first pass (records with ``fd_env{i}_in_acc``). A run is
    read as one record: each key's last value in the order the records were written. Its
    score is the mean ``out`` accuracy of the training envs (the first pass's last
    checkpoint) and the number reported is the full-data model's ``fd_env{t}_in_acc``.
    Runs without full-data records give nothing.
    """

    name = "training_domain_auto_lr"
    title = "training-domain validation, full-data model (auto-LR)"

    def _scores(self, df: pd.DataFrame) -> pd.DataFrame:
        single = df[df["n_test_envs"] == 1].sort_values("record_index", kind="mergesort")
        # groupby.last skips missing values column by column: a key a record lacks keeps its earlier value
        merged = single.groupby("output_dir", sort=False, as_index=False).last()
        env = merged["test_env"].to_numpy(dtype="int64")
        return merged.assign(val_acc=_training_domain_out_mean(merged), test_acc=_acc(merged, "in", env, prefix="fd_"))


def get_selection_method(name: str) -> SelectionMethod:
    """The rule registered as ``name``; the error lists the valid names."""
    return SELECTION_METHODS.get(name)
