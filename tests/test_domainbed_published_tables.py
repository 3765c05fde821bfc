"""collect_results reproduces DomainBed's own numbers on DomainBed's published test sweep.

DomainBed ships the records of a small sweep (ERM on VLCS) with the text its
``collect_results`` printed for them (tests/fixtures/domainbed_test_sweep, README there).
We run our ``collect_results`` on the same records and check that every number DomainBed
printed (each test-domain cell and Avg of every dataset table and of the averages table,
under each of the three selection rules) appears identically in our text. The two texts
are parsed independently: DomainBed's by its fixed-width rows, ours by its tables.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import pytest

from domainbed.scripts import collect_results

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "domainbed_test_sweep"

# DomainBed's name of each selection rule -> the title our tables print.
RULE_TITLES = {
    "training-domain validation set": "training-domain validation",
    "leave-one-domain-out cross-validation": "leave-one-domain-out validation",
    "test-domain validation set (oracle)": "test-domain validation (oracle)",
}

Cells = dict[tuple[str, str, str, str], str]  # (rule title, table, row, column) -> printed cell


def _split_row(line: str) -> list[str]:
    """Cells of one printed row: columns are separated by two spaces or more, while a cell
    holds single spaces only (``98.0 +/- 0.2``)."""
    return re.split(r"\s{2,}", line.strip())


def parse_domainbed(text: str) -> tuple[int, Cells]:
    """DomainBed's ``collect_results`` text: ``Total records: N``, then per table a line
    ``-------- Dataset: D, model selection method: M`` (or ``-------- Averages, ...``), a
    header row and one row per algorithm."""
    total = int(re.search(r"^Total records: (\d+)$", text, re.M).group(1))
    cells: Cells = {}
    blocks = re.split(r"^-------- ", text, flags=re.M)[1:]
    for block in blocks:
        head, header, *rows = [line for line in block.splitlines() if line.strip()]
        match = re.fullmatch(r"(?:Dataset: (\S+)|Averages), model selection method: (.+)", head.strip())
        table = match.group(1) or "Averages"
        title = RULE_TITLES[match.group(2)]
        columns = _split_row(header)
        for row in rows:
            values = _split_row(row)
            assert len(values) == len(columns), row
            for column, value in zip(columns[1:], values[1:]):
                cells[(title, table, values[0], column)] = value
    return total, cells


def parse_ours(text: str) -> tuple[int, Cells]:
    """Our text: ``Loaded N records ...``, then per rule a ``===== Model selection: T =====``
    heading and tables, each a caption paragraph (``D - selection: T. ...`` or ``Averages
    over test domains per dataset - selection: ...``), a header row, a rule of dashes and
    one row per algorithm."""
    total = int(re.search(r"^Loaded (\d+) records from", text, re.M).group(1))
    cells: Cells = {}
    sections = re.split(r"^===== Model selection: (.+) =====$", text, flags=re.M)
    for title, body in zip(sections[1::2], sections[2::2]):
        paragraphs = [p.splitlines() for p in re.split(r"\n\s*\n", body.strip())]
        for caption, grid in zip(paragraphs[::2], paragraphs[1::2]):
            name = caption[0].split(" - selection: ")[0]
            table = "Averages" if name.startswith("Averages over test domains") else name
            header, rule, *rows = grid
            assert set(rule.replace(" ", "")) == {"-"}, rule
            columns = _split_row(header)
            for row in rows:
                values = _split_row(row)
                for column, value in zip(columns[1:], values[1:]):
                    cells[(title, table, values[0], column)] = value
    return total, cells


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> tuple[str, str, Path]:
    """(DomainBed's text, ours, the sweep folder): ``collect_results.main`` run in-process on
    a copy of the published sweep (it saves its tables in the sweep folder, which must not
    be the committed fixture)."""
    sweep = tmp_path_factory.mktemp("domainbed") / "test_sweep_data"
    shutil.copytree(FIXTURE / "sweep", sweep)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        collect_results.main(["--input_dir", str(sweep)])
    return (FIXTURE / "collect_results_output.txt").read_text(), out.getvalue(), sweep


def test_the_fixture_is_domainbeds_whole_test_sweep() -> None:
    jobs = sorted(p for p in (FIXTURE / "sweep").iterdir() if p.is_dir())
    assert len(jobs) == 40
    assert all((job / "results.jsonl").is_file() and (job / "done").is_file() for job in jobs)


def test_every_number_domainbed_printed_is_in_our_tables(outputs) -> None:
    theirs_text, ours_text, sweep = outputs
    their_total, theirs = parse_domainbed(theirs_text)
    our_total, ours = parse_ours(ours_text)
    assert our_total == their_total == 200
    # 3 rules x (VLCS: 4 domains + Avg; averages: VLCS + Avg)
    assert len(theirs) == 21
    assert {key: ours.get(key) for key in theirs} == theirs
    assert (sweep / "results.txt").read_text() == ours_text  # saved beside the runs, as DomainBed does


def test_the_parsers_read_what_they_claim() -> None:
    """The comparison above is only as good as the parsers: pin them on DomainBed's text."""
    _, theirs = parse_domainbed((FIXTURE / "collect_results_output.txt").read_text())
    assert theirs[("training-domain validation", "VLCS", "ERM", "C")] == "98.0 +/- 0.2"
    assert theirs[("test-domain validation (oracle)", "Averages", "ERM", "Avg")] == "77.8"
    assert theirs[("leave-one-domain-out validation", "VLCS", "ERM", "V")] == "76.7 +/- 0.1"
