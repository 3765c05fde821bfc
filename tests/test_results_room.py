"""The results room: one package from results.jsonl to tables and figures, knowing no algorithm.

DomainBed's import names (``domainbed.lib.query``, ``domainbed.lib.reporting``,
``domainbed.model_selection``) stay as re-exports of it; the comparisons a report shows come
from its caller; every standard error is one of two conventions, named where it is shown.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "domainbed" / "results"
FACADES = {
    "domainbed/lib/query.py": "domainbed.results.query",
    "domainbed/lib/reporting.py": "domainbed.results.record_dicts",
}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_results_package_knows_no_algorithm_and_no_layer_above_it():
    above = ("domainbed.algorithms", "domainbed.model_selection", "domainbed.scripts", "domainbed.training",
             "domainbed.networks", "domainbed.launchers", "domainbed.sweep", "domainbed.inference")
    offending = {
        (str(path.relative_to(REPO)), module)
        for path in RESULTS.rglob("*.py")
        for module in imported_modules(path)
        if module.startswith(above)
    }
    assert offending == set(), "pass what the algorithms declared in from the caller"


def test_domainbeds_import_names_are_thin_re_exports():
    for relative, target in FACADES.items():
        tree = ast.parse((REPO / relative).read_text())
        defined = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))]
        assert defined == [], f"{relative} defines {[n.name for n in defined]}: it only re-exports {target}"
        assert imported_modules(REPO / relative) == {target}
        facade = importlib.import_module(relative[:-3].replace("/", "."))
        implementation = importlib.import_module(target)
        assert all(getattr(facade, name) is getattr(implementation, name) for name in facade.__all__)


def test_model_selection_only_delegates():
    """DomainBed's module name: re-exports, DomainBed's class names (a title each) and the two
    questions to the algorithm registry; no logic of its own."""
    tree = ast.parse((REPO / "domainbed" / "model_selection.py").read_text())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert functions == {"reports_averaged_model", "paired_comparisons"}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        body = [n for n in cls.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        assert [type(n) for n in body] == [ast.Assign] and body[0].targets[0].id == "name", cls.name


def test_model_selection_re_exports_the_one_prepare_records_and_the_rules():
    from domainbed import model_selection
    from domainbed.results import selection

    assert model_selection.prepare_records is selection.prepare_records
    for name in ("TrainingDomainValidation", "LeaveOneDomainOut", "OracleSelection", "TrainingDomainAutoLR"):
        assert getattr(model_selection, name) is getattr(selection, name)
    # DomainBed's class names are the same rules, with DomainBed's titles as ``name``.
    assert issubclass(model_selection.IIDAccuracySelectionMethod, selection.TrainingDomainValidation)
    assert issubclass(model_selection.IIDAutoLRAccuracySelectionMethod, selection.TrainingDomainAutoLR)


def test_the_old_homes_are_gone():
    for old in ("domainbed/lib/records.py", "domainbed/lib/selection.py", "domainbed/lib/paired_gains.py",
                "domainbed/lib/tables", "domainbed/reporting"):
        assert not (REPO / old).exists(), old
    from domainbed.results import paired_gains, tables

    assert not hasattr(paired_gains, "EVIDENCE_COMPARISONS") and not hasattr(tables, "mean_se")


def test_the_package_docstring_says_what_it_holds_and_who_uses_it():
    import domainbed.results

    doc = domainbed.results.__doc__
    for module in ("records", "selection", "standard_error", "paired_gains", "tables", "plotting", "query"):
        assert f":mod:`.{module}`" in doc, module
    assert all(user in doc for user in ("scripts", "notebooks", "evidence reports", "inference"))


# ----------------------------------------------------------------------------- one statistic


def _selected() -> pd.DataFrame:
    """Two arms, one dataset with two domains, three paired trials."""
    acc = {("T", 0): (0.80, 0.60), ("T", 1): (0.70, 0.65), ("T", 2): (0.90, 0.70),
           ("B", 0): (0.75, 0.50), ("B", 1): (0.72, 0.61), ("B", 2): (0.85, 0.69)}
    return pd.DataFrame([dict(dataset="D", algorithm=a, trial_seed=t, test_env=e, test_acc=v[e], n_envs=2)
                         for (a, t), v in acc.items() for e in (0, 1)])


def test_gain_tables_and_paired_gains_give_the_same_numbers():
    from domainbed.results.paired_gains import paired_gains
    from domainbed.results.tables import paired_gain_stats

    table = paired_gain_stats(_selected(), [("T", "B")])
    report = paired_gains(_selected(), [("T", "B")])
    report = report[report["test_env"] >= 0]
    assert list(table["comparison"]) == list(report["comparison"]) == ["T − B", "T − B"]
    assert list(100 * table["mean"]) == pytest.approx(list(report["mean"]), abs=1e-9)
    assert list(100 * table["se"]) == pytest.approx(list(report["se"]), abs=1e-9)
    # domain 0: differences 5, -2, 5 points: sample std 7/sqrt(3) -> SE 7/3 (population would give 3.30/sqrt(3))
    assert report.iloc[0]["se"] == pytest.approx(7 / 3)


def test_table_captions_name_their_standard_error():
    from domainbed.results.tables import SweepLayout, dataset_tables, gain_tables

    layout = SweepLayout(["D"], {"D": ["B", "T"]}, {"D": 2}, comparisons=[("T", "B")])
    accuracy = dataset_tables(_selected(), "training_domain", "training-domain validation", layout)[0]
    gains = gain_tables(_selected(), "training_domain", "training-domain validation", layout)[0]
    assert "SE = population std / sqrt(n), DomainBed's convention" in accuracy.caption
    assert "SE = sample std (ddof 1) / sqrt(n); no SE for n = 1" in gains.caption
    assert [row.label for row in gains.rows] == ["T − B"]


def test_figures_take_their_comparisons_from_the_caller(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from domainbed.results import plotting, plotting_gains

    with pytest.raises(ValueError, match="paired_comparisons"):
        plotting_gains.plot_paired_gains(_selected(), "training_domain")
    with pytest.raises(ValueError, match="paired_comparisons"):
        plotting.plot_ftlp_bars(_selected(), "training_domain")
