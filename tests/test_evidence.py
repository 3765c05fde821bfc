"""The committed evidence tables regenerate, byte for byte, from the committed raw records."""

from __future__ import annotations

import importlib.util
import math
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EVIDENCE = REPO / "docs" / "evidence"


def load_report_module():
    spec = importlib.util.spec_from_file_location("make_report", EVIDENCE / "make_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tables_regenerate_identically_from_committed_records(monkeypatch):
    monkeypatch.chdir(REPO)  # the tables print the (relative) records path
    report = load_report_module()
    jobs = list((EVIDENCE / "records" / "main").glob("*/results.jsonl"))
    assert len(jobs) == 42  # 7 algorithms x 2 test domains x 3 trials
    assert (EVIDENCE / "tables.md").read_text() == report.TABLES_HEADER + report.tables()


def test_affine_encoder_tables_regenerate_identically(monkeypatch):
    monkeypatch.chdir(REPO)
    report = load_report_module()
    expected = report.TABLES_HEADER.replace("records/main", "records_affine_encoder") + report.tables(
        "docs/evidence/records_affine_encoder")
    assert (EVIDENCE / "tables_affine_encoder.md").read_text() == expected


# ----------------------------------------------------------------------------- evidence v2

V2 = EVIDENCE / "v2"


def load_v2_report():
    spec = importlib.util.spec_from_file_location("make_report_v2", V2 / "make_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def committed_records(dest_root: Path, folder: str = "docs/evidence/v2/records") -> Path:
    """Copy the committed files of ``folder`` (git ls-files) under ``dest_root``, same relative path.

    The background sweep writes into the same folder in the main checkout; its unfinished or
    not yet committed jobs must not change what the committed reports are compared with."""
    git = shutil.which("git")
    try:
        if git is None:
            raise OSError("git not found")
        listed = subprocess.run([git, "ls-files", "-z", folder], cwd=REPO, capture_output=True, check=True).stdout
        files = [f for f in listed.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything on disk is committed
        files = [str(p.relative_to(REPO)) for p in (REPO / folder).glob("*/*") if p.name in ("results.jsonl", "done")]
    (dest_root / folder).mkdir(parents=True, exist_ok=True)
    for name in files:
        target = dest_root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    return dest_root / folder


@pytest.fixture(scope="module")
def v2_copy(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2")
    committed_records(root)
    return root


def test_v2_tables_regenerate_identically_from_committed_records(v2_copy, monkeypatch):
    monkeypatch.chdir(v2_copy)  # same relative path as from the repository root
    report = load_v2_report()
    assert (V2 / "tables.md").read_text() == report.TABLES_HEADER + report.tables()


def test_v2_gains_and_verdict_regenerate_identically(v2_copy, monkeypatch):
    monkeypatch.chdir(v2_copy)
    report = load_v2_report()
    assert (V2 / "gains.md").read_text() == report.gains_markdown()
    readme = (V2 / "README.md").read_text()
    assert report.verdict_block() in readme


def test_v2_gains_match_paired_gains_on_the_records(v2_copy, monkeypatch):
    """A number of gains.md equals an independent loop over the selected runs."""
    monkeypatch.chdir(v2_copy)
    report = load_v2_report()
    from domainbed.model_selection import get_selection_method
    from domainbed.results.records import load_records

    selected = get_selection_method("training_domain").select(load_records(report.RECORDS).df)
    acc = {(r.algorithm, r.dataset, r.trial_seed, r.test_env): 100 * r.test_acc for r in selected.itertuples()}
    gains = report.all_gains(load_records(report.RECORDS).df)["training_domain"]
    text = report.gains_markdown()
    domains = report.sweep_domains()
    for (treatment, baseline), dataset in [(c, d) for c in report.EVIDENCE_COMPARISONS for d in domains]:
        per_trial = []
        for trial in sorted({k[2] for k in acc}):
            keys = [(trial, e) for e in domains[dataset]]
            if all((a, dataset, t, e) in acc for a in (treatment, baseline) for t, e in keys):
                per_trial.append(sum(acc[(treatment, dataset, t, e)] - acc[(baseline, dataset, t, e)] for t, e in keys)
                                 / len(keys))
        got = gains[(gains["dataset"] == dataset) & (gains["treatment"] == treatment)
                    & (gains["baseline"] == baseline) & (gains["test_env"] == -1)].iloc[0]
        assert got["n"] == len(per_trial)
        if per_trial:
            assert got["mean"] == pytest.approx(sum(per_trial) / len(per_trial))
        if len(per_trial) >= 2:  # the precision section: spread so far and trials for SE <= 0.7
            sd = statistics.stdev(per_trial)
            needed = max(2, math.ceil(sd**2 / 0.7**2 - 1e-9))
            row = next(line for line in text.splitlines() if line.startswith(f"| {dataset} | {treatment} − {baseline} |"))
            assert row.split(" | ")[3:5] == [f"{sd:.1f}", str(needed)]


def test_v2_convergence_table_matches_a_loop_over_the_raw_records(v2_copy, monkeypatch):
    """The Convergence table of gains.md against the results.jsonl files read by hand."""
    monkeypatch.chdir(v2_copy)
    report = load_v2_report()
    import json

    jobs: dict[tuple[str, str], list[tuple[bool, float]]] = {}
    for path in sorted((v2_copy / report.RECORDS).glob("*/results.jsonl")):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        lines = [r for r in lines if not r.get("averaged")]
        args = lines[0]["args"]
        test = args["test_envs"][0]
        train = [i for i in range(len([k for k in lines[0] if k.endswith("_in_acc")])) if i != test]
        val = [sum(r[f"env{i}_out_acc"] for i in train) / len(train) for r in lines]
        acc = {r["step"]: 100 * r[f"env{test}_in_acc"] for r in lines}
        final = max(acc)
        earlier = max(s for s in acc if s <= final - 100)
        picked_last = val[-1] > max(val[:-1])  # the rule keeps the first of equal checkpoints
        jobs.setdefault((args["dataset"], args["algorithm"]), []).append((picked_last, acc[final] - acc[earlier]))
    text = report.gains_markdown()
    for (dataset, algorithm), runs in jobs.items():
        rise = sum(r for _, r in runs) / len(runs)
        picks = sum(p for p, _ in runs)
        row = f"| {dataset} | {algorithm} | {len(runs)} | {picks} of {len(runs)} | {rise:+.1f} |"
        assert row in text


@pytest.mark.slow
def test_v2_report_main_writes_every_output_without_hparam_records(v2_copy, tmp_path, monkeypatch):
    monkeypatch.chdir(v2_copy)
    report = load_v2_report()
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Verdict\n\n{report.VERDICT_START}\nold\n{report.VERDICT_END}\n")
    empty = tmp_path / "no_hparam_records"
    empty.mkdir()
    main_readme = tmp_path / "MAIN_README.md"
    main_readme.write_text(f"# y\n\n{report.SUMMARY_START}\nstale\n{report.SUMMARY_END}\n")
    report.main(["--out", str(tmp_path / "out"), "--hparam_records", str(empty), "--readme", str(readme),
                 "--main_readme", str(main_readme)])
    assert "stale" not in main_readme.read_text() and report.summary_block() in main_readme.read_text()
    for name in ("per_domain_accuracy.png", "gains_per_domain.png", "gains_per_domain_oracle.png", "control.png", "lambda.png"):
        assert (tmp_path / "out" / name).read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "out" / "gains.md").read_text() == report.gains_markdown()
    assert "old" not in readme.read_text() and report.verdict_block() in readme.read_text()
    with pytest.raises(ValueError, match="has no markers"):
        report.update_readme(tmp_path / "out" / "gains.md", "x")


def test_v2_training_time_sums_step_time_over_intervals():
    report = load_v2_report()
    import pandas as pd

    df = pd.DataFrame({"output_dir": ["a"] * 3 + ["b"] * 2, "dataset": "D", "algorithm": ["X"] * 3 + ["Y"] * 2,
                       "step": [0, 50, 99, 0, 9], "step_time": [2.0, 1.0, 0.5, 3.0, 1.0],
                       "averaged": [False] * 5})
    df = pd.concat([df, df.iloc[[2]].assign(averaged=True)])  # an averaged record does not count again
    times = report.training_seconds(df).set_index("algorithm")["seconds"]
    assert times["X"] == pytest.approx(2.0 * 1 + 1.0 * 50 + 0.5 * 49)
    assert times["Y"] == pytest.approx(3.0 * 1 + 1.0 * 9)


def test_v2_compute_table_gives_each_arms_total_and_median_job():
    report = load_v2_report()
    import pandas as pd

    # Arm X: three one-checkpoint jobs of 10, 20 and 600 s (a slowed job moves the total, not the median).
    df = pd.DataFrame({"output_dir": ["a", "b", "c", "d"], "dataset": "D", "algorithm": ["X", "X", "X", "Y"],
                       "step": [9, 9, 9, 4], "step_time": [1.0, 2.0, 60.0, 0.5], "averaged": [False] * 4})
    rows = [line for line in report.training_time_text(df).splitlines() if line.startswith("| D |")]
    assert rows == ["| D | X | 3 | 630 | 20 |", "| D | Y | 1 | 2 | 2 |"]


def test_v2_readme_summary_table_regenerates_from_committed_records(v2_copy, monkeypatch):
    """The evidence table of the verdicts page, docs/evidence/README.md, is what make_report
    writes from the committed records, and each of its cells is the benchmark-mean cell of
    gains.md."""
    monkeypatch.chdir(v2_copy)
    report = load_v2_report()
    block = report.summary_block()
    assert block in (EVIDENCE / "README.md").read_text()
    gains_md = (V2 / "gains.md").read_text()
    domains = report.sweep_domains()
    rows = [line for line in block.splitlines() if line.startswith("| ") and " − " in line.split(" | ")[0]]
    assert len(rows) == len(report.EVIDENCE_COMPARISONS)
    for row in rows:
        cells = row.strip("| ").split(" | ")
        for k, dataset in enumerate(sorted(domains)):
            section = gains_md.split(f"## {dataset} (")[1].split("### Per test domain")[0]
            md = next(line for line in section.splitlines() if line.startswith(f"| {cells[0]} |")).strip("| ").split(" | ")
            train, oracle, n = cells[1 + 3 * k: 4 + 3 * k]
            assert (train, oracle) == (md[1].replace("-", "−"), md[3].replace("-", "−"))
            assert n == (md[2] if md[2] == md[4] else f"{md[2]}/{md[4]}")


def _sweep_jobs(sweep: str, output_dir: Path) -> dict[tuple, Path]:
    from domainbed.scripts.sweep import parse_args
    from domainbed.sweep.jobs import build_jobs

    args = parse_args(["status", "--sweep", sweep, "--output_dir", str(output_dir)])
    return {(j.train_args["dataset"], j.train_args["algorithm"], tuple(j.train_args["test_envs"]),
             j.train_args["trial_seed"]): j.output_dir for j in build_jobs(args)}


@pytest.mark.parametrize("name, dataset, arms, n_trials", [
    ("offline_evidence_v2_more_trials", "OfflineDigits", 3, 26),
    ("offline_evidence_v2_more_trials_digits", "OfflineDigits", 5, 16),
    ("offline_evidence_v2_more_trials_rotated", "RotatedMNISTSubset", 4, 16),
    ("offline_evidence_v2_more_trials_digits_round3", "OfflineDigits", 5, 20),
])
def test_v2_added_trials_reuse_the_main_sweeps_job_folders(tmp_path, name, dataset, arms, n_trials):
    """An added-trials sweep is the same jobs with more trials: its first five trials are the
    main sweep's job folders (so they are not run twice), and its later trials are new."""
    main = _sweep_jobs("offline_evidence_v2", tmp_path)
    more = _sweep_jobs(name, tmp_path)
    n_domains = {"OfflineDigits": 4, "RotatedMNISTSubset": 6}[dataset]
    assert {key[0] for key in more} == {dataset} and len({key[1] for key in more}) == arms
    shared = [key for key in more if key[3] < 5]
    assert len(shared) == arms * n_domains * 5 and len(more) == arms * n_domains * n_trials
    assert all(more[key] == main[key] for key in shared)
    assert not {more[key] for key in more if key[3] >= 5} & set(main.values())
    assert {key[3] for key in more} == set(range(n_trials))


def test_v2_added_trials_files_agree_where_they_overlap(tmp_path):
    """Every job (benchmark, arm, test domain, trial) has one folder whichever sweep file
    plans it, so a job two files share runs once."""
    folders: dict[tuple, str] = {}
    report = load_v2_report()
    names = [path.stem for path in (report.SWEEP, *report.ADDED_TRIALS)]
    assert len(names) == 5
    for name in names:
        for key, folder in _sweep_jobs(name, tmp_path).items():
            assert folders.setdefault(key, folder) == folder, (name, key)
    assert len(set(folders.values())) == len(folders)


def test_v2_plan_counts_trials_and_jobs_of_every_sweep_file():
    report = load_v2_report()
    assert report.planned_trials("OfflineDigits", "ERM_FTLP", "ERM") == 26
    assert report.planned_trials("OfflineDigits", "ERM_FTLP", "ERM_FTLP_ShuffledPrior") == 26
    # ERM_FTLP has 26 trials there, MIRO 20: a paired comparison has as many as its scarcer arm
    assert report.planned_trials("OfflineDigits", "ERM_FTLP", "MIRO") == 20
    assert report.planned_trials("OfflineDigits", "MIRO", "ERM") == 20
    # an arm gets the most trials any file plans for it (16 in the second round, 20 in the third)
    assert report.planned_trials("OfflineDigits", "CORAL_FTLP", "CORAL") == 20
    assert report.planned_trials("OfflineDigits", "SWAD_FTLP", "SWAD") == 20
    assert report.planned_trials("RotatedMNISTSubset", "ERM_FTLP", "ERM") == 16
    assert report.planned_trials("RotatedMNISTSubset", "ERM_FTLP", "ERM_FTLP_ShuffledPrior") == 16
    assert report.planned_trials("RotatedMNISTSubset", "SWAD_FTLP", "SWAD") == 5
    assert report.planned_trials("OfflineDigits", "ERM", "NotAnArm") == 0
    # 8 arms x 5 trials x (4 + 6) domains; added: 3 arms x 21 trials x 4 domains (OfflineDigits),
    # 5 arms x 11 trials x 4 domains (OfflineDigits), 4 arms x 11 trials x 6 domains (RotatedMNISTSubset),
    # 5 arms x 4 trials x 4 domains (OfflineDigits, third round)
    assert report.planned_jobs() == 8 * 5 * 10 + 3 * 21 * 4 + 5 * 11 * 4 + 4 * 11 * 6 + 5 * 4 * 4


def test_v2_verdict_rows_agree_with_their_own_intervals_and_the_se_target(v2_copy, monkeypatch):
    """Each Verdict row: the reading follows the printed interval's sign, the interval is
    mean ± t(0.975, df = n − 1) · SE from a t quantile table (keyed by df), and the SE column follows the printed SEs."""
    monkeypatch.chdir(v2_copy)
    report = load_v2_report()
    t975 = {4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179,
            13: 2.160, 14: 2.145, 15: 2.131, 19: 2.093, 24: 2.064, 25: 2.060}
    rows = [line.strip("| ").split(" | ") for line in report.verdict_block().splitlines()
            if line.startswith("| ") and " − " in line and not line.startswith("| benchmark")]
    assert len(rows) == 2 * len(report.EVIDENCE_COMPARISONS)
    checked = 0
    for row in rows:
        n = int(row[8].split(" of ")[0].split("/")[0])
        ses = []
        for gain, interval, said in (row[2:5], row[5:8]):
            mean, se = (float(x.replace("−", "-")) for x in gain.split(" ± "))
            low, high = (float(x.replace("−", "-")) for x in interval.strip("[]").split(", "))
            expected = "treatment better" if low > 0 else "baseline better" if high < 0 else "no detectable difference"
            if abs(low) >= 0.05 and abs(high) >= 0.05:  # the sign of a printed ±0.0 bound is not readable
                assert said == expected
            if n - 1 in t975:  # rounding of mean, SE and bound to 0.1 moves it by at most 0.05 · (t + 2)
                assert abs(high - (mean + t975[n - 1] * se)) <= 0.05 * (t975[n - 1] + 2) + 1e-9
                checked += 1
            ses.append(se)
        met = row[9]
        assert met == {(True, True): "yes", (False, False): "no", (True, False): "training-domain only",
                       (False, True): "oracle only"}[tuple(s <= 0.7 + 0.05 for s in ses)] or any(
            abs(s - 0.7) <= 0.05 for s in ses)  # an SE printed as 0.7 may lie on either side
    assert checked > 0


def _plain_words(text: str, start: str, end: str) -> str:
    """The hand-written text between the generated block ending ``start`` and the heading ``end``."""
    after = text.split(start, 1)[1]
    return after.split(end, 1)[0]


def test_v2_plain_words_quote_only_figures_of_the_verdict_table():
    """The verdicts written by hand (the verdicts page, evidence v2's README) quote gains (mean ± SE)
    and 95% intervals; each must be one of the committed Verdict table's cells, so prose cannot
    keep a figure that a regenerated report no longer has."""
    report = load_v2_report()
    evidence_readme = (V2 / "README.md").read_text()
    table = evidence_readme.split(report.VERDICT_START, 1)[1].split(report.VERDICT_END, 1)[0]
    cells = {c.strip().replace("−", "-") for line in table.splitlines() if line.startswith("| ")
             for c in line.strip("|").split("|")}
    quoted = r"[+−-]\d+\.\d\s+±\s+\d+\.\d|\[[+−-]\d+\.\d,\s+[+−-]\d+\.\d\]"  # may wrap across lines
    texts = {
        "docs/evidence/README.md": _plain_words((EVIDENCE / "README.md").read_text(), report.SUMMARY_END, "\n## "),
        "docs/evidence/v2/README.md": _plain_words(evidence_readme, report.VERDICT_END, "\n## "),
    }
    for name, text in texts.items():
        figures = [" ".join(f.split()) for f in re.findall(quoted, text)]
        assert len(figures) >= 6, f"{name}: expected the verdict paragraph to quote its figures"
        stale = [f for f in figures if f.replace("−", "-") not in cells]
        assert not stale, f"{name} quotes figures the Verdict table does not have: {stale}"
