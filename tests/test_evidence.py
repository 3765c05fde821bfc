"""The committed evidence tables regenerate, byte for byte, from the committed raw records."""

from __future__ import annotations

import importlib.util
from pathlib import Path

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
