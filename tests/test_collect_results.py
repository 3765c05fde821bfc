"""Results loading, model selection, tables, collect_results and list_top_hparams.

Expected values are computed here with plain Python from the synthetic jobs of
``fixtures_records`` (in memory, not the files), independently of the pandas code.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

import pandas as pd
import pytest

from domainbed.model_selection import SELECTION_METHODS, prepare_records, reports_averaged_model
from domainbed.results.records import load_records
from domainbed.results.tables import (
    REFERENCE_DATASETS,
    Row,
    Stat,
    SweepLayout,
    Table,
    averages_table,
    format_stat,
    render,
    run_domains_table,
)
from domainbed.scripts import collect_results, list_top_hparams

import fixtures_records as fx

RULES = ("training_domain", "leave_one_out", "oracle")


# ----------------------------------------------------------------------------- reference

def _finished(jobs: list[fx.Job]) -> list[fx.Job]:
    return [j for j in jobs if j.done and j.records]


def _reported(job: fx.Job) -> list[dict]:
    """The records that stand for a run: the averaged one if written, else all."""
    averaged = [r for r in job.records if r.get("averaged")]
    return averaged[-1:] if averaged else job.records


def _ckpt(rec: dict) -> object:
    return "averaged" if rec.get("averaged") else rec["step"]


def reference_selection(jobs: list[fx.Job], rule: str) -> dict[tuple, tuple[int, float, bool]]:
    """{(dataset, algorithm, test_env, trial): (hparams_seed, test_acc, averaged)} by brute force."""
    finished = _finished(jobs)
    pairs = {}
    for j in finished:
        if len(j.test_envs) == 2:
            pairs[(j.dataset, j.algorithm, frozenset(j.test_envs), j.hparams_seed, j.trial_seed)] = {
                _ckpt(r): r for r in _reported(j)
            }
    best: dict[tuple, tuple[float, int, float, bool]] = {}
    for j in finished:
        if len(j.test_envs) != 1:
            continue
        t = j.test_envs[0]
        others = [e for e in range(fx.N_ENVS) if e != t]
        recs = _reported(j)
        scored = []  # (val, test, averaged) per candidate checkpoint, in step order
        if rule == "training_domain":
            for r in recs:
                scored.append((sum(r[f"env{e}_out_acc"] for e in others) / len(others), r[f"env{t}_in_acc"], bool(r.get("averaged"))))
        elif rule == "oracle":
            r = recs[-1]
            scored.append((r[f"env{t}_out_acc"], r[f"env{t}_in_acc"], bool(r.get("averaged"))))
        else:
            for r in recs:
                vals = []
                for v in others:
                    run = pairs.get((j.dataset, j.algorithm, frozenset({t, v}), j.hparams_seed, j.trial_seed), {})
                    if _ckpt(r) in run:
                        vals.append(run[_ckpt(r)][f"env{v}_in_acc"])
                if len(vals) == len(others):
                    scored.append((sum(vals) / len(vals), r[f"env{t}_in_acc"], bool(r.get("averaged"))))
        if not scored:
            continue
        top = max(s[0] for s in scored)
        val, test, avg = next(s for s in scored if s[0] == top)  # earliest checkpoint on ties
        key = (j.dataset, j.algorithm, t, j.trial_seed)
        old = best.get(key)
        if old is None or val > old[0] or (val == old[0] and j.hparams_seed < old[1]):
            best[key] = (val, j.hparams_seed, test, avg)
    return {k: (hp, test, avg) for k, (val, hp, test, avg) in best.items()}


def expected_cell(sel: dict, dataset: str, algorithm: str, env: int) -> tuple[float, float, int] | None:
    vals = [v[1] for k, v in sel.items() if k[:3] == (dataset, algorithm, env)]
    if not vals:
        return None
    return statistics.fmean(vals), statistics.pstdev(vals) / math.sqrt(len(vals)), len(vals)


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[fx.Job]]:
    root = tmp_path_factory.mktemp("sweep")
    return root, fx.write_sweep(root)


@pytest.fixture(scope="module")
def load(sweep):
    return load_records(sweep[0])


@pytest.fixture(scope="module")
def tables(sweep) -> dict:
    return {t.key: t for t in collect_results.build_tables(sweep[0], RULES)}


# ----------------------------------------------------------------------------- loading

def test_load_counts_and_skips(sweep, load):
    _, jobs = sweep
    finished = _finished(jobs)
    assert load.n_incomplete == 2  # the unfinished job and the one that crashed before writing
    assert load.n_truncated_lines == 1
    assert load.n_unreadable == 0
    assert load.n_jobs == len(finished)
    assert len(load.df) == sum(len(j.records) for j in finished)
    assert 5 not in set(load.df["hparams_seed"])  # the unfinished job's records are not read
    assert set(load.df["dataset"]) == {"ToyA", "ToyB"}  # ToyB lives one directory deeper
    single = load.df[load.df["n_test_envs"] == 1]
    assert (single["test_env"] == single["test_envs"].map(lambda t: t[0])).all()
    assert load.df.loc[load.df["n_test_envs"] == 2, "test_env"].isna().all()
    text = load.summarise()
    assert "Skipped 2 incomplete jobs" in text and "Skipped 1 truncated" in text


def test_load_include_incomplete(sweep):
    loaded = load_records(sweep[0], include_incomplete=True)
    assert 5 in set(loaded.df["hparams_seed"])
    assert "Included 2 incomplete jobs" in loaded.summarise()


def test_load_missing_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_records(tmp_path / "nope")


def test_load_unreadable_and_malformed(tmp_path):
    bad = tmp_path / "job_bad"
    bad.mkdir()
    (bad / "done").write_text("")  # finished but no results.jsonl
    odd = tmp_path / "job_odd"
    odd.mkdir()
    (odd / "done").write_text("")
    (odd / "results.jsonl").write_text('{"step": 0}\n[1, 2]\nnot json\n')
    loaded = load_records(tmp_path)
    assert (loaded.n_unreadable, loaded.n_malformed, loaded.n_truncated_lines) == (1, 2, 1)
    assert loaded.df.empty


# ----------------------------------------------------------------------------- selection

@pytest.mark.parametrize("rule", RULES)
def test_selection_matches_brute_force(sweep, load, rule):
    expected = reference_selection(sweep[1], rule)
    got = SELECTION_METHODS[rule].select(load.df)
    got_map = {
        (r["dataset"], r["algorithm"], r["test_env"], r["trial_seed"]): (r["hparams_seed"], r["test_acc"], r["averaged"])
        for r in got.to_dict("records")
    }
    assert set(got_map) == set(expected)
    for key, (hp, test, avg) in expected.items():
        assert got_map[key][0] == hp, key
        assert got_map[key][1] == pytest.approx(test, abs=1e-9), key
        assert got_map[key][2] == avg, key


def test_rules_pick_what_the_fixture_was_built_for(sweep):
    """Hand-derived picks (see fixtures_records): the brute force itself is right."""
    jobs = sweep[1]
    td, loo, oracle = (reference_selection(jobs, r) for r in RULES)
    acc = fx.accuracy
    key = ("ToyA", "ERM", 0, 0)
    assert td[key][:2] == (1, acc("ToyA", "ERM", (0,), 1, 0, 2, 0, "in"))
    assert oracle[key][:2] == (0, acc("ToyA", "ERM", (0,), 0, 0, 2, 0, "in"))
    assert loo[key][:2] == (0, acc("ToyA", "ERM", (0,), 0, 0, 1, 0, "in"))
    # SWAD: the averaged record is what counts.
    assert td[("ToyA", "SWAD", 1, 0)] == (1, acc("ToyA", "SWAD", (1,), 1, 0, 2, 1, "in", averaged=True), True)
    # The fallback run (no averaged record) loses the oracle to the averaged hparams seed 1.
    assert oracle[("ToyA", "SWAD_FTLP", 0, 2)] == (1, acc("ToyA", "SWAD_FTLP", (0,), 1, 2, 2, 0, "in", averaged=True), True)
    assert oracle[("ToyA", "SWAD_FTLP", 0, 1)] == (0, acc("ToyA", "SWAD_FTLP", (0,), 0, 1, 2, 0, "in", averaged=True), True)
    assert ("ToyB", "ERM", 0, 0) not in loo  # no pair runs for ToyB


def test_swad_uses_only_the_averaged_record(load):
    prepared = prepare_records(load.df, reports_averaged_model)
    swad = prepared.df[prepared.df["algorithm"].str.startswith("SWAD")]
    per_run = swad.groupby("output_dir")["averaged"].agg(["all", "size"])
    fallback = [d for d in per_run.index if d.endswith("ToyA_SWAD_FTLP_te0_hp0_tr2")]
    assert len(fallback) == 1 and prepared.averaged_fallback_dirs == fallback
    assert per_run.drop(fallback)["all"].all() and (per_run.drop(fallback)["size"] == 1).all()
    assert per_run.loc[fallback[0], "size"] == len(fx.STEPS)
    assert any("no averaged-model record" in n for n in prepared.notes())


def test_leave_one_out_without_pairs_returns_nothing(load):
    singles = load.df[load.df["n_test_envs"] == 1]
    assert SELECTION_METHODS["leave_one_out"].select(singles).empty


# ----------------------------------------------------------------------------- tables

@pytest.mark.parametrize("rule", RULES)
def test_dataset_table_cells(sweep, tables, rule):
    sel = reference_selection(sweep[1], rule)
    for dataset in fx.DATASETS:
        key = f"{rule}/{dataset}"
        if not any(k[0] == dataset for k in sel):
            assert key not in tables  # ToyB has no leave-one-out results
            continue
        table = tables[key]
        assert table.columns == ["env0", "env1", "env2"]
        assert [r.label for r in table.rows] == sorted(fx.ALGORITHMS[dataset])
        for row in table.rows:
            means = []
            for env, cell in enumerate(row.cells):
                mean, se, n = expected_cell(sel, dataset, row.label, env)
                assert cell.mean == pytest.approx(mean, abs=1e-12)
                assert cell.se == pytest.approx(se, abs=1e-12)
                assert cell.n == n == len(fx.TRIALS[dataset])
                means.append(mean)
            assert row.avg == pytest.approx(sum(means) / len(means), abs=1e-12)


@pytest.mark.parametrize("rule", RULES)
def test_averages_table(sweep, tables, rule):
    sel = reference_selection(sweep[1], rule)
    table = tables[f"{rule}/averages"]
    assert table.columns == ["ToyA", "ToyB"]
    for row in table.rows:
        dataset_means = []
        for dataset, cell in zip(table.columns, row.cells):
            trial_means = []
            for trial in fx.TRIALS[dataset]:
                accs = [sel[(dataset, row.label, e, trial)][1] for e in range(fx.N_ENVS) if (dataset, row.label, e, trial) in sel]
                if len(accs) == fx.N_ENVS:
                    trial_means.append(sum(accs) / len(accs))
            if not trial_means:
                assert cell is None, (rule, row.label, dataset)
                dataset_means.append(None)
                continue
            assert cell.mean == pytest.approx(statistics.fmean(trial_means), abs=1e-12)
            assert cell.se == pytest.approx(statistics.pstdev(trial_means) / math.sqrt(len(trial_means)), abs=1e-12)
            assert cell.n == len(trial_means)
            dataset_means.append(cell.mean)
        if None in dataset_means:
            assert row.avg is None
        else:
            assert row.avg == pytest.approx(sum(dataset_means) / len(dataset_means), abs=1e-12)
    # MIRO never ran on ToyB; leave-one-out has no ToyB numbers at all.
    assert table.row("MIRO").cells[1] is None and table.row("MIRO").avg is None
    if rule == "leave_one_out":
        assert all(r.cells[1] is None for r in table.rows)


@pytest.mark.parametrize("rule", RULES)
def test_paired_gain_tables(sweep, tables, rule):
    sel = reference_selection(sweep[1], rule)
    comparisons = {"ToyA": [("ERM_FTLP", "ERM"), ("SWAD_FTLP", "SWAD"), ("ERM_FTLP", "MIRO")], "ToyB": [("ERM_FTLP", "ERM")]}
    for dataset, comps in comparisons.items():
        table = tables[f"{rule}/gains/{dataset}"] if f"{rule}/gains/{dataset}" in tables else None
        if rule == "leave_one_out" and dataset == "ToyB":
            assert table is None
            continue
        assert [r.label for r in table.rows] == [f"{a} − {b}" for a, b in comps]
        for (treat, base), row in zip(comps, table.rows):
            for env, cell in enumerate(row.cells):
                diffs = [
                    sel[(dataset, treat, env, t)][1] - sel[(dataset, base, env, t)][1]
                    for t in fx.TRIALS[dataset]
                    if (dataset, treat, env, t) in sel and (dataset, base, env, t) in sel
                ]
                assert cell.n == len(diffs)
                assert cell.mean == pytest.approx(statistics.fmean(diffs), abs=1e-12)
                if len(diffs) == 1:  # a paired gain of one trial has no SE
                    assert cell.se is None
                else:  # the sample std of the paired differences, ddof 1
                    assert cell.se == pytest.approx(statistics.stdev(diffs) / math.sqrt(len(diffs)), abs=1e-12)


def test_gain_se_is_of_the_paired_differences_not_of_the_groups():
    # Two trials: treatment 0.60/0.70, base 0.50/0.60 -> differences 0.10/0.10, SE 0.
    selected = pd.DataFrame(
        {
            "dataset": ["D"] * 4,
            "algorithm": ["ERM", "ERM", "ERM_FTLP", "ERM_FTLP"],
            "test_env": [0] * 4,
            "trial_seed": [0, 1, 0, 1],
            "test_acc": [0.50, 0.60, 0.60, 0.70],
        }
    )
    from domainbed.results.tables import paired_gain_stats

    stats = paired_gain_stats(selected, [("ERM_FTLP", "ERM"), ("ERM_FTLP", "MIRO")])
    assert len(stats) == 1  # MIRO did not run: no pair
    assert stats.loc[0, "comparison"] == "ERM_FTLP − ERM"
    assert stats.loc[0, "mean"] == pytest.approx(0.10) and stats.loc[0, "se"] == pytest.approx(0.0, abs=1e-12)


def test_cell_format():
    stat = Stat(0.6, 0.1 / math.sqrt(2), 2)  # 0.5 and 0.7: population std 0.1
    assert format_stat(stat, "text") == "60.0 +/- 7.1"
    assert format_stat(stat, "markdown", row_n=3) == "60.0 ± 7.1 (n=2)"
    assert format_stat(stat, "latex", signed=True) == r"+60.0 $\pm$ 7.1"
    assert format_stat(None) == "X"


def test_reference_rows_in_averages_table():
    datasets = list(REFERENCE_DATASETS)
    selected = pd.DataFrame(
        [{"dataset": d, "algorithm": "ERM", "test_env": e, "trial_seed": 0, "test_acc": 0.5} for d in datasets for e in range(2)]
    )
    layout = SweepLayout(datasets, {d: ["ERM"] for d in datasets}, {d: 2 for d in datasets})
    table = averages_table(selected, "training_domain", "training-domain validation", layout, reference=True)
    swad = table.row("SWAD (reported)")
    assert [c.mean for c in swad.cells] == pytest.approx([0.881, 0.791, 0.706, 0.500, 0.465])
    assert swad.avg == pytest.approx(0.669)
    assert table.row("MIRO+SWAD (reported)").avg == pytest.approx(0.681)
    assert table.row("ERM (reported)").cells[0].mean == pytest.approx(0.855)
    assert table.row("CORAL (reported)").cells[4].mean == pytest.approx(0.415)
    text = render(table, "text")
    assert "MIRO (reported)" in text and "65.9" in text and "(reported) rows" in text
    # Only the datasets shown: PACS alone gives the PACS number and no paper average.
    one = averages_table(selected[selected["dataset"] == "PACS"], "t", "t", SweepLayout(["PACS"], {"PACS": ["ERM"]}, {"PACS": 2}), True)
    assert one.row("MIRO (reported)").cells[0].mean == pytest.approx(0.854)
    assert one.row("MIRO (reported)").avg == pytest.approx(0.854)


def test_collect_results_passes_what_the_registries_know():
    # The layout gets domain names from the dataset registry, and the averaged-model
    # algorithms and the pairs to compare from the algorithms' traits; unknown names get none.
    algorithms = ["ERM_FTLP", "ERM_FTLP_ShuffledPrior", "MIRO", "SWAD", "SWAD_FTLP", "CORAL_FTLP", "Unknown_FTLP", "Unknown"]
    df = pd.DataFrame(
        [{"dataset": d, "algorithm": a, "n_envs": 4} for d in ("PACS", "NoSuchDataset") for a in algorithms]
    )
    layout = collect_results.registry_layout(df)
    assert dict(layout.domains) == {"PACS": ["A", "C", "P", "S"]}
    assert layout.domain_names("NoSuchDataset") == ("env0", "env1", "env2", "env3")
    assert layout.averaged == {"SWAD", "SWAD_FTLP"}
    # No ERM or CORAL ran: their variants have no pair; Unknown_FTLP is not guessed from its name.
    assert list(layout.comparisons) == [("SWAD_FTLP", "SWAD"), ("ERM_FTLP", "ERM_FTLP_ShuffledPrior"), ("ERM_FTLP", "MIRO")]


def _rendered_table() -> Table:
    cells = [Stat(0.5, 0.01, 3), None, Stat(0.25, 0.0, 2)]
    return Table("k", "Caption — a ± b", ["d0", "d_1", "d2"], [Row.of("A|B_1", cells), Row.of("C", [Stat(0.1, 0.0, 3)] * 3)])


def test_rendered_tables_read_back_as_their_cells():
    table = _rendered_table()
    expected_head = ["Algorithm", "d0", "d_1", "d2", "Avg", "n"]
    expected = [["A|B_1", "50.0 {pm} 1.0", "X", "25.0 {pm} 0.0 (n=2)", "X", "3"], ["C", *["10.0 {pm} 0.0"] * 3, "10.0", "3"]]
    # Text: the rule under the header marks each column's span.
    lines = render(table, "text").split("\n\n", 1)[1].splitlines()
    spans = [m.span() for m in re.finditer(r"-+", lines[1])]
    cut = lambda line: [line[a:b + 2].strip() if i < len(spans) - 1 else line[a:].strip() for i, (a, b) in enumerate(spans)]  # noqa: E731
    assert cut(lines[0]) == expected_head
    assert [cut(line) for line in lines[2:]] == [[c.format(pm="+/-") for c in r] for r in expected]
    # Markdown: split on the pipes that are not escaped.
    md = render(table, "markdown").splitlines()
    assert md[0] == "**Caption — a ± b**" and md[1] == ""
    split = lambda line: [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]  # noqa: E731
    assert split(md[2]) == expected_head and re.fullmatch(r"\|(-+\|){6}", md[3])
    assert [split(line) for line in md[4:]] == [[c.format(pm="±") for c in r] for r in expected]
    # LaTeX: booktabs rules, escaped labels and caption, cells as formatted.
    tex = render(table, "latex").splitlines()
    assert tex[:4] == [r"\begin{table}[ht]", r"\centering", r"\caption{Caption --- a $\pm$ b}", r"\begin{tabular}{lccccc}"]
    assert tex[4] == r"\toprule" and tex[6] == r"\midrule" and tex[-3:] == [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    row = lambda line: [c.strip() for c in line.removesuffix(r"\\").split(" & ")]  # noqa: E731
    assert row(tex[5]) == ["Algorithm", "d0", r"d\_1", "d2", "Avg", "n"]
    assert [row(line) for line in tex[7:-3]] == [[r"A|B\_1", *[c.format(pm=r"$\pm$") for c in expected[0][1:]]],
                                                 [c.format(pm=r"$\pm$") for c in expected[1]]]


# ----------------------------------------------------------------------------- output

def test_collect_text_counts_and_captions(sweep):
    out = collect_results.collect(sweep[0])
    head = out.split("=====")[0]
    assert "Skipped 2 incomplete jobs" in head and "Skipped 1 truncated" in head
    assert "no averaged-model record" in head
    for title in ("training-domain validation", "leave-one-domain-out validation", "test-domain validation (oracle)"):
        assert f"Model selection: {title}" in out
        assert f"ToyA - selection: {title}" in out
    # the caption names the averaging algorithms a table shows, and only those
    assert "SWAD, SWAD_FTLP rows use the final averaged model" in out
    assert "ERM_FTLP - MIRO" in out and "SWAD_FTLP - SWAD" in out  # plain text: ASCII minus


def _expected_string(sweep, rule: str, dataset: str, algorithm: str, env: int, pm: str) -> str:
    mean, se, _ = expected_cell(reference_selection(sweep[1], rule), dataset, algorithm, env)
    return f"{100 * mean:.1f} {pm} {100 * se:.1f}"


@pytest.mark.parametrize("fmt,pm", [("text", "+/-"), ("markdown", "±"), ("latex", r"$\pm$")])
def test_collect_formats(sweep, fmt, pm):
    out = collect_results.collect(sweep[0], selection=["training_domain"], fmt=fmt)
    cell = _expected_string(sweep, "training_domain", "ToyA", "SWAD_FTLP", 1, pm)
    if fmt == "text":
        line = next(line for line in out.splitlines() if line.startswith("SWAD_FTLP "))
        assert cell in line
    elif fmt == "markdown":
        line = next(line for line in out.splitlines() if line.startswith("| SWAD_FTLP "))
        assert cell in line and line.count("|") == 7
        rules = [line for line in out.splitlines() if line.startswith("|-")]
        assert rules and all(re.fullmatch(r"\|(-+\|)+", rule) for rule in rules)  # GitHub pipes, no alignment marks
    else:
        assert r"\begin{tabular}{lccccc}" in out and r"\toprule" in out and r"\end{table}" in out
        line = next(line for line in out.splitlines() if line.startswith(r"SWAD\_FTLP "))
        assert cell in line and line.endswith(r"\\")
        preamble = [line for line in out.split(r"\begin{table}")[0].splitlines() if line.strip()]
        assert preamble and all(line.startswith("%") for line in preamble)


def test_collect_reference_note_and_main(sweep, capsys):
    collect_results.main(["--input_dir", str(sweep[0]), "--markdown", "--reference", "--selection", "oracle"])
    out = capsys.readouterr().out
    assert out.count("## Model selection") == 1 and "Skipped 2 incomplete jobs" in out
    assert "Reference rows are published under training-domain validation" in out
    with pytest.raises(SystemExit, match="does not exist"):
        collect_results.main(["--input_dir", str(sweep[0] / "missing")])


def test_collect_partial_and_empty_sweeps(sweep, tmp_path):
    out = collect_results.collect(sweep[0] / "part2")  # ToyB only: no pair runs
    assert "No results under leave-one-domain-out validation" in out and "ToyB - selection" in out
    with pytest.raises(collect_results.NoRecordsError, match="results.jsonl"):
        collect_results.collect(tmp_path)


def test_main_on_a_folder_without_records_exits_2_and_saves_nothing(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        collect_results.main(["--input_dir", str(tmp_path)])
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"no records to tabulate under {tmp_path}" in captured.err and "results.jsonl" in captured.err
    assert list(tmp_path.iterdir()) == []  # no empty results.txt that would read as a result
    # jobs that never finished: the message says so and what to pass
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "results.jsonl").write_text('{"step": 0}\n')
    with pytest.raises(SystemExit) as stop:
        collect_results.main(["--input_dir", str(tmp_path)])
    assert stop.value.code == 2 and "--include_incomplete" in capsys.readouterr().err
    assert not (tmp_path / "results.txt").exists()


def test_list_top_hparams(sweep, capsys):
    list_top_hparams.main(
        ["--input_dir", str(sweep[0]), "--dataset", "ToyA", "--algorithm", "SWAD", "--test_env", "1", "--selection", "training_domain", "oracle"]
    )
    out = capsys.readouterr().out
    td, oracle = out.split("== test-domain validation (oracle) ==")
    assert "== training-domain validation ==" in td
    # hparams seed 1 ranks first under training-domain validation, seed 0 under the oracle.
    first = lambda block: [line.split()[1] for line in block.splitlines() if line.startswith("1 ")]  # noqa: E731
    assert first(td) == ["1", "1", "1"] and first(oracle) == ["0", "0", "0"]
    assert '"lr": 0.002' in td and "200 (averaged)" in td
    # only the hparam that differs is in the rows; the shared one is said once, above them
    assert "hparams shared by every run listed: batch_size=32" in out
    rows = [line for line in out.splitlines() if re.match(r"\d+ +\d+ ", line)]
    assert rows and not [line for line in rows if "batch_size" in line]


def test_list_top_hparams_rows_stay_narrow_with_many_hparams(sweep, tmp_path):
    """A real hparams dict has some twenty entries (~250 characters); rows show those that differ."""
    root = tmp_path / "wide"
    fx.write_sweep(root)
    many = {f"some_hparam_{i:02d}": 0.125 * i for i in range(20)}
    for path in (root / "part2").rglob("results.jsonl"):  # ToyB: no truncated lines
        records = [json.loads(line) for line in path.read_text().splitlines()]
        for rec in records:
            rec["hparams"].update(many)
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = list_top_hparams.list_top_hparams(root, "ToyB", "ERM", 0, ["training_domain"])
    assert max(len(line) for line in out.splitlines() if "under" not in line) <= 100
    rows = [line for line in out.splitlines() if re.match(r"\d+ +\d+ ", line)]
    assert len(rows) == 4 and all(line.endswith(('{"lr": 0.001}', '{"lr": 0.002}')) for line in rows)
    assert "some_hparam_19=2.375" in out
    with pytest.raises(SystemExit, match="found: ToyA, ToyB"):
        list_top_hparams.main(["--input_dir", str(sweep[0]), "--dataset", "PACS", "--algorithm", "ERM", "--test_env", "0"])


# ----------------------------------------------------------------------------- averages rule

def _selected(rows: list[tuple[str, str, int, int, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["dataset", "algorithm", "test_env", "trial_seed", "test_acc"])


def test_dataset_average_keeps_only_trials_with_every_domain():
    # Trial 0 ran the 3 domains, trial 1 only two of them. DomainBed would average trial 1
    # over its two domains (0.9) into the cell, giving (0.6 + 0.9) / 2 = 0.75; we keep trial 0.
    selected = _selected(
        [("D", "ERM", 0, 0, 0.5), ("D", "ERM", 1, 0, 0.6), ("D", "ERM", 2, 0, 0.7),
         ("D", "ERM", 0, 1, 0.9), ("D", "ERM", 1, 1, 0.9),
         ("D", "CORAL", 0, 0, 0.4), ("D", "CORAL", 1, 0, 0.4)]
    )
    layout = SweepLayout(["D"], {"D": ["CORAL", "ERM"]}, {"D": 3})
    table = averages_table(selected, "t", "t", layout)
    erm = table.row("ERM").cells[0]
    assert (erm.mean, erm.se, erm.n) == (pytest.approx(0.6), pytest.approx(0.0), 1)
    assert table.row("CORAL").cells[0] is None  # no complete trial: X
    assert "counts only when it has every test domain" in table.caption
    # Every domain was run by some algorithm, so there is no table of partial averages.
    assert run_domains_table(selected, "t", "t", layout) is None


def test_run_domains_table_averages_the_domains_a_sweep_ran():
    # A PACS sweep that ran test domains A (0) and P (2) only: the full average is X, the
    # average over A and P is printed, labelled with those domains.
    selected = _selected(
        [("PACS", "ERM", 0, 0, 0.80), ("PACS", "ERM", 2, 0, 0.90),
         ("PACS", "ERM", 0, 1, 0.70), ("PACS", "ERM", 2, 1, 0.96),
         ("PACS", "CORAL", 0, 0, 0.75)]  # CORAL's trial lacks P: left out
    )
    unnamed = SweepLayout(["PACS"], {"PACS": ["CORAL", "ERM"]}, {"PACS": 4})
    assert run_domains_table(selected, "t", "t", unnamed).columns == ["PACS [env0, env2 only]"]  # lib knows no names
    layout = SweepLayout(["PACS"], {"PACS": ["CORAL", "ERM"]}, {"PACS": 4}, domains={"PACS": ["A", "C", "P", "S"]})
    assert averages_table(selected, "t", "t", layout).row("ERM").cells[0] is None
    table = run_domains_table(selected, "t", "t", layout)
    assert table.key == "t/averages_run_domains" and table.columns == ["PACS [A, P only]"]
    trial_means = [(0.80 + 0.90) / 2, (0.70 + 0.96) / 2]
    erm = table.row("ERM").cells[0]
    assert erm.mean == pytest.approx(statistics.fmean(trial_means))
    assert erm.se == pytest.approx(statistics.pstdev(trial_means) / math.sqrt(2)) and erm.n == 2
    assert table.row("CORAL").cells[0] is None
    assert "not comparable with averages over all domains" in render(table, "text")


def test_collect_prints_run_domain_averages_for_a_partial_sweep(tmp_path):
    # Only test domain env1 of ToyA was run (single-env jobs of one env, as the offline demo does).
    jobs = [j for j in fx.build_jobs() if j.dataset == "ToyA" and j.test_envs == (1,) and j.done and j.records]
    for job in jobs:
        out = tmp_path / job.dirname
        out.mkdir(parents=True)
        (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in job.records))
        (out / "done").write_text("done\n")
    text = collect_results.collect(tmp_path, selection=["training_domain"])
    assert "Averages over the test domains that were run" in text and "ToyA [env1 only]" in text
    sel = reference_selection(jobs, "training_domain")
    mean, se, n = expected_cell(sel, "ToyA", "ERM", 1)
    line = next(line for line in text.split("Averages over the test domains that were run")[1].splitlines() if line.startswith("ERM "))
    assert f"{100 * mean:.1f} +/- {100 * se:.1f}" in line


# ----------------------------------------------------------------------------- saved tables

@pytest.mark.parametrize("flag,name", [([], "results.txt"), (["--markdown"], "results.md"), (["--latex"], "results.tex")])
def test_main_saves_the_printed_tables_in_the_sweep_folder(tmp_path, capsys, flag, name):
    root = tmp_path / "sweep"
    fx.write_sweep(root)
    collect_results.main(["--input_dir", str(root), *flag])
    captured = capsys.readouterr()
    saved = root / name
    assert saved.read_text() == captured.out and "Model selection" in captured.out
    assert f"tables saved to {saved}" in captured.err
    assert [p.name for p in root.glob("results.*")] == [name]


def test_demo_saves_its_tables_as_results_txt_in_the_sweep_folder(tmp_path, monkeypatch, capsys):
    """``make demo``: the tables it prints are also in SWEEP/results.txt, as collect_results saves them.
    The sweep and the notebook are stubbed: the fixture sweep stands for a finished demo sweep."""
    from domainbed.scripts import demo, run_notebook, sweep

    root = tmp_path / "demo_sweep"
    fx.write_sweep(root)
    monkeypatch.setattr(sweep, "main", lambda argv: 0)
    monkeypatch.setattr(run_notebook, "execute", lambda notebook, sweep_dir, output, timeout=600: [])
    monkeypatch.setattr(demo, "per_domain_accuracy", lambda sweep_dir: "")  # Toy datasets are not registered
    demo.main(["--output_dir", str(root)])
    saved = root / "results.txt"
    assert saved.is_file()
    assert saved.read_text() == collect_results.collect(root, selection=["training_domain", "oracle"])
    out = capsys.readouterr().out
    assert saved.read_text() in out and f"Tables saved to {saved}" in out
    # a demo whose sweep left no records stops with collect_results' message and status
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as stop:
        demo.main(["--output_dir", str(empty)])
    assert stop.value.code == 2 and "results.jsonl" in capsys.readouterr().err
    assert not (empty / "results.txt").exists()
