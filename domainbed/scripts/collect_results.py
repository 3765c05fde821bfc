"""Print the result tables of a sweep: ``python -m domainbed.scripts.collect_results``.

    python -m domainbed.scripts.collect_results --input_dir SWEEP_DIR [--markdown | --latex]
        [--reference] [--selection training_domain leave_one_out oracle] [--include_incomplete]
        [--metric acc|nll|ece] [--auto_lr]

For each selection rule: one table per dataset (rows algorithms, columns domains + Avg),
an averages table over datasets (plus one over the domains run when a sweep ran only
some), and the paired gain tables (the pairs the algorithms declared: each variant against
its base, against its control arm, against the published method it is measured against;
:func:`domainbed.model_selection.paired_comparisons`). Accuracy cells are mean ± SE over
trial seeds with DomainBed's SE (population std / sqrt(n)); gain cells use the sample SE
(:mod:`domainbed.results.standard_error`). Counts of skipped unfinished jobs
and truncated lines come first, so a partial sweep is read, never a crash. The same text is
saved as ``results.txt`` (``results.md``, ``results.tex``) in the sweep folder, as DomainBed
does. ``--metric nll`` or ``ece`` reports the test domain's negative log-likelihood or
expected calibration error at the checkpoints the rules select (by accuracy, as always),
saved as ``results_nll.txt`` / ``results_ece.txt``. ``--auto_lr`` (DomainBed's flag) reports
ERM++'s auto-LR rule alone (``--selection training_domain_auto_lr``). A folder without any
finished job's records is an error (exit status 2) that says what was looked for, and saves
nothing. Call :func:`collect` to get the text in-process, :func:`collect_and_save` to also
save it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from domainbed.model_selection import (
    DEFAULT_SELECTION,
    SELECTION_METHODS,
    SelectionMethod,
    get_selection_method,
    paired_comparisons,
    prepare_records,
    reports_averaged_model,
)
from domainbed.results.layout import sweep_layout
from domainbed.results.records import RecordLoad, load_records
from domainbed.results.standard_error import accuracy_mean_se
from domainbed.results.tables import (
    ACC,
    FORMATS,
    TABLE_METRICS,
    SweepLayout,
    Table,
    TableMetric,
    averages_table,
    dataset_tables,
    gain_tables,
    render,
    run_domains_table,
    with_test_metric,
)


def _comment(lines: str, fmt: str) -> str:
    """Prefix free text with '% ' in LaTeX so the output pastes into a document."""
    if fmt != "latex":
        return lines
    return "\n".join(f"% {line}" if line else "%" for line in lines.splitlines())


def _heading(text: str, fmt: str) -> str:
    if fmt == "markdown":
        return f"## {text}"
    if fmt == "latex":
        return f"% ===== {text} ====="
    return f"===== {text} ====="


class NoRecordsError(ValueError):
    """The sweep folder holds no finished job's records: there is nothing to tabulate."""


EXIT_NO_RECORDS = 2  # as argparse's usage errors: the command was pointed at the wrong folder


def no_records_message(load: RecordLoad) -> str:
    """What was looked for under the folder, what was found, and what to do next."""
    found = (
        f"found {load.n_incomplete} job folder(s) without a 'done' file (still running or interrupted): "
        "pass --include_incomplete to tabulate their checkpoints so far"
        if load.n_incomplete and not load.include_incomplete
        else "found none with records; point --input_dir at the --output_dir of a sweep, or launch one "
        "(python -m domainbed.scripts.sweep launch ...)"
    )
    return (
        f"no records to tabulate under {load.sweep_dir}: looked for results.jsonl files in finished job "
        f"folders (with a 'done' file), searching every subfolder; {found}"
    )


def registry_layout(df: pd.DataFrame) -> SweepLayout:
    """The layout of prepared records with what the registries know: domain names (dataset
    registry), the algorithms that report an averaged model and the pairs the gain tables
    compare (what the algorithms declared, :mod:`domainbed.model_selection`)."""
    algorithms = sorted(df["algorithm"].unique()) if len(df) else []
    return sweep_layout(
        df, averaged=[a for a in algorithms if reports_averaged_model(a)], comparisons=paired_comparisons(algorithms)
    )


def method_tables(load: RecordLoad, method: SelectionMethod, reference: bool = False,
                  metric: TableMetric = ACC) -> list[Table] | str:
    """The tables of one selection rule, or a one-line reason why it has none."""
    prepared = prepare_records(load.df, reports_averaged_model)
    selected = method.select(prepared)
    if selected.empty:
        if method.name == "leave_one_out":
            return f"No results under {method.title}: the sweep has no runs with two test envs (launch it without --single_test_envs)."
        if method.name == "training_domain_auto_lr":
            return (f"No results under {method.title}: no run has full-data records (fd_env*_in_acc), "
                    "which ERM++'s auto-LR second pass writes.")
        return f"No results under {method.title}: no run has the accuracies this rule needs."
    selected = with_test_metric(selected, prepared.df, metric)
    if selected.empty:
        return (f"No {metric.name} results under {method.title}: the selected records have no env*_in_{metric.name} "
                "(written before calibration was recorded).")
    layout = registry_layout(prepared.df)
    tables = dataset_tables(selected, method.name, method.title, layout, metric)
    published = reference and method.name == "training_domain" and metric is ACC  # published rows are accuracies
    tables.append(averages_table(selected, method.name, method.title, layout, published, metric))
    partial = run_domains_table(selected, method.name, method.title, layout, metric)
    if partial is not None:
        tables.append(partial)
    tables += gain_tables(selected, method.name, method.title, layout, metric)
    return tables


def build_tables(
    input_dir: str | os.PathLike[str],
    selection: Sequence[str] = DEFAULT_SELECTION,
    reference: bool = False,
    include_incomplete: bool = False,
    metric: str = "acc",
) -> list[Table]:
    """Every table :func:`collect` prints, as :class:`Table` objects (keys ``rule/dataset``,
    ``rule/averages``, ``rule/gains/dataset``)."""
    methods = [get_selection_method(name) for name in selection]
    load = load_records(input_dir, include_incomplete=include_incomplete)
    out: list[Table] = []
    for method in methods:
        tables = method_tables(load, method, reference, _metric(metric))
        out += tables if isinstance(tables, list) else []
    return out


def collect(
    input_dir: str | os.PathLike[str],
    selection: Sequence[str] = DEFAULT_SELECTION,
    fmt: str = "text",
    reference: bool = False,
    include_incomplete: bool = False,
    metric: str = "acc",
) -> str:
    """All tables of the sweep under ``input_dir`` as one string in ``fmt``, skip counts first;
    ``metric`` (acc, nll, ece) is the number the cells report.

    Raises :class:`NoRecordsError` when the folder holds no records to tabulate.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    methods = [get_selection_method(name) for name in selection]
    table_metric = _metric(metric)
    load = load_records(input_dir, include_incomplete=include_incomplete)
    if load.df.empty:
        raise NoRecordsError(no_records_message(load))
    notes = [load.summarise(), *prepare_records(load.df, reports_averaged_model).notes()]
    if fmt == "latex":
        notes.append("Tables need \\usepackage{booktabs}.")
    parts = [_comment("\n".join(notes), fmt)]
    for method in methods:
        suffix = "" if table_metric is ACC else f" (reported: test-domain {table_metric.name})"
        parts.append(_heading(f"Model selection: {method.title}{suffix}", fmt))
        tables = method_tables(load, method, reference, table_metric)
        if isinstance(tables, str):
            parts.append(_comment(tables, fmt))
        else:
            parts += [render(t, fmt) for t in tables]
    if reference and "training_domain" not in [m.name for m in methods]:
        parts.append(
            _comment("Reference rows are published under training-domain validation; add --selection training_domain to see them.", fmt)
        )
    return "\n\n".join(parts) + "\n"


RESULT_FILES = {"text": "results.txt", "markdown": "results.md", "latex": "results.tex"}


def _metric(name: str) -> TableMetric:
    if name not in TABLE_METRICS:
        raise ValueError(f"unknown metric {name!r}; choose from {', '.join(TABLE_METRICS)}")
    return TABLE_METRICS[name]


def save_results(input_dir: str | os.PathLike[str], text: str, fmt: str, metric: str = "acc") -> Path:
    """Write ``text`` to ``results.txt`` (``.md``, ``.tex``; ``results_nll.txt`` etc. for
    another metric) in the sweep folder, as DomainBed keeps its tables next to the runs."""
    name = RESULT_FILES[fmt]
    if metric != "acc":
        stem, ext = name.split(".")
        name = f"{stem}_{metric}.{ext}"
    path = Path(input_dir) / name
    path.write_text(text)
    return path


def collect_and_save(
    input_dir: str | os.PathLike[str], selection: Sequence[str] = DEFAULT_SELECTION, fmt: str = "text",
    **options: bool | str,
) -> tuple[str, Path | None]:
    """:func:`collect`, then :func:`save_results`: the text and where it was saved (None, with
    a note on stderr, when the folder is read-only: the tables were produced all the same).
    ``options``: ``reference``, ``include_incomplete``, ``metric`` of :func:`collect`."""
    text = collect(input_dir, selection, fmt, **options)
    try:
        return text, save_results(input_dir, text, fmt, str(options.get("metric", "acc")))
    except OSError as err:
        print(f"collect_results: could not save the tables in {input_dir}: {err}", file=sys.stderr)
        return text, None


# ---------------------------------------------------------------------- DomainBed's helpers
# For scripts written against DomainBed's collect_results: its cell format and table printer.


def format_mean(data: Iterable[float], latex: bool) -> tuple[float | None, float | None, str]:
    """``(mean, standard error, text)`` of accuracies given as fractions: mean and SE in
    percent (SE: population std / √n, as our accuracy tables), text ``"m.m +/- s.s"``
    (``$\\pm$`` in LaTeX); ``(None, None, "X")`` when ``data`` is empty."""
    values = [float(v) for v in data]
    if not values:
        return None, None, "X"
    mean, se, _ = accuracy_mean_se(values)
    mean, err = 100 * mean, 100 * se
    pm = "$\\pm$" if latex else "+/-"
    return mean, err, f"{mean:.1f} {pm} {err:.1f}"


def print_row(row: Sequence[object], colwidth: int = 10, latex: bool = False) -> None:
    """Print ``row`` as DomainBed does: fixed-width cells (floats with 10 decimals, each cell
    cut or padded to ``colwidth``) joined by two spaces, or a LaTeX row (`` & ``, ``\\\\``)."""

    def cell(value: object) -> str:
        if np.issubdtype(type(value), np.floating):
            value = f"{value:.10f}"
        return str(value).ljust(colwidth)[:colwidth]

    sep, end = (" & ", "\\\\") if latex else ("  ", "")
    print(sep.join(cell(v) for v in row), end)


def print_table(table: Sequence[Sequence[object]], header_text: str, row_labels: Sequence[str],
                col_labels: Sequence[str], colwidth: int = 10, latex: bool = True) -> None:
    """Print ``table`` (rows of cells, without labels) as DomainBed does: ``row_labels`` in a
    first column under ``col_labels[0]``, fixed-width cells (:func:`print_row`),
    ``header_text`` above a text table, a booktabs ``tabular`` in LaTeX. The arguments are
    not modified."""
    print("")
    if latex:
        n_cols = len(table[0]) if table else 0
        print("\\begin{center}\n\\adjustbox{max width=\\textwidth}{%")
        print("\\begin{tabular}{l" + "c" * n_cols + "}\n\\toprule")
        header = ["\\textbf{" + str(label).replace("%", "\\%") + "}" for label in col_labels]
    else:
        print("--------", header_text)
        header = list(col_labels)
    print_row(header, colwidth=colwidth, latex=latex)
    if latex:
        print("\\midrule")
    for label, row in zip(row_labels, table):
        print_row([label, *row], colwidth=colwidth, latex=latex)
    if latex:
        print("\\bottomrule\n\\end{tabular}}\n\\end{center}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Tabulate the results of a DomainBed sweep.")
    parser.add_argument("--input_dir", required=True, help="sweep directory (searched recursively for results.jsonl)")
    style = parser.add_mutually_exclusive_group()
    style.add_argument("--markdown", action="store_true", help="print Markdown tables")
    style.add_argument("--latex", action="store_true", help="print LaTeX tables (booktabs)")
    parser.add_argument("--reference", action="store_true", help="add published ResNet-50 averages, labelled (reported)")
    parser.add_argument(
        "--selection", nargs="+", default=list(DEFAULT_SELECTION), choices=list(SELECTION_METHODS),
        help="model-selection rules to report (default: all)",
    )
    parser.add_argument(
        "--auto_lr", action="store_true",
        help="as DomainBed's flag: report only the training_domain_auto_lr rule (ERM++'s full-data model)",
    )
    parser.add_argument("--include_incomplete", action="store_true", help="also read jobs without a 'done' file")
    parser.add_argument(
        "--metric", choices=list(TABLE_METRICS), default="acc",
        help="number the cells report at the selected checkpoints: acc (default), nll or ece of the test domain",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    fmt = "markdown" if args.markdown else "latex" if args.latex else "text"
    if args.auto_lr:
        args.selection = ["training_domain_auto_lr"]
    try:
        text, saved = collect_and_save(
            args.input_dir, args.selection, fmt, reference=args.reference, include_incomplete=args.include_incomplete,
            metric=args.metric,
        )
    except NoRecordsError as err:  # nothing printed, nothing saved: an empty results.txt would look like a result
        print(f"collect_results: {err}", file=sys.stderr)
        raise SystemExit(EXIT_NO_RECORDS) from None
    except ValueError as err:
        raise SystemExit(f"collect_results: {err}") from None
    print(text, end="")
    if saved is not None:
        print(f"collect_results: tables saved to {saved}", file=sys.stderr)


if __name__ == "__main__":
    main()
