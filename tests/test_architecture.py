"""The package's shape: one-way imports, traits read through the registry, citations.

The import graph is read from the source with ``ast`` (module-level and function-level
imports alike), so a cycle hidden inside a function counts too.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import domainbed
from domainbed import model_selection
from domainbed.algorithms import (
    algorithm_names,
    comparisons,
    get_algorithm_class,
    register_algorithm,
    reports_averaged_model,
)
from domainbed.algorithms import registry as algorithms_registry
from domainbed.results import selection

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "domainbed"



def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports anywhere in its source."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets.update(f"{base}.{alias.name}" for alias in node.names)
                targets.add(base)
        deps = set()
        for target in targets:
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target.startswith("domainbed") and target != name and target != "domainbed":
                deps.add(target)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert "domainbed.scripts.train" in graph and graph["domainbed.scripts.train"]  # the walk sees imports
    assert cycles(graph) == []


def test_a_cycle_is_detected() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# Rooms, bottom to top: a module imports only its own room and rooms of a lower rank, so
# rooms of one rank are independent of each other (training and results, say).
# DomainBed's import names form the top room "faces": lib.query and lib.reporting re-export
# results/, lib.misc re-exports or wraps helpers from several rooms (tests/test_results_room.py
# and tests/test_training_room.py check that nothing of ours imports them).
ROOM_RANKS = {
    "lib": 0, "version": 0,
    "networks": 1, "datasets": 1,
    "algorithms": 2,
    "hparams_registry": 3,
    "training": 4, "results": 4,
    "model_selection": 5, "launchers": 5,
    "sweep": 6, "inference": 6,
    "scripts": 7, "command_launchers": 7,
    "faces": 8, "domainbed": 8,
}
FACES = {"domainbed.lib.query", "domainbed.lib.reporting", "domainbed.lib.misc"}


def room_of(module: str) -> str:
    """``domainbed.<room>[...]``, DomainBed's faces in a room of their own."""
    if module in FACES:
        return "faces"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "domainbed"


def imports_against_the_layers(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {
        (name, dep)
        for name, deps in graph.items()
        for dep in deps
        if room_of(dep) != room_of(name) and ROOM_RANKS[room_of(dep)] >= ROOM_RANKS[room_of(name)]
    }


def test_every_room_has_a_rank() -> None:
    assert {room_of(name) for name in import_graph()} == set(ROOM_RANKS)


def test_imports_go_down_the_rooms() -> None:
    assert imports_against_the_layers(import_graph()) == set(), \
        "a room imports only lower rooms: pass what it needs in (see docs/design.md §2)"


def test_an_import_against_the_layers_is_found() -> None:
    graph = {"domainbed.lib.errors": {"domainbed.training.trainer"},
             "domainbed.results.records": {"domainbed.training.loaders"},
             "domainbed.scripts.train": {"domainbed.training.trainer"}}
    assert imports_against_the_layers(graph) == {("domainbed.lib.errors", "domainbed.training.trainer"),
                                                 ("domainbed.results.records", "domainbed.training.loaders")}


def test_algorithm_base_class_carries_no_reporting_traits() -> None:
    from domainbed.algorithms import Algorithm

    assert not {"FTLP_BASE", "CONTROL_OF", "BASELINE_OF", "AVERAGED_MODEL"} & set(dir(Algorithm))


def test_averaged_model_is_declared_at_registration_and_inherited() -> None:
    averaged = {name for name in algorithm_names() if algorithms_registry.reports_averaged_model(name)}
    assert averaged == {"SWAD", "SWAD_FTLP"}  # SWAD_FTLP derives from SWAD
    assert algorithms_registry.declaration("SWAD").averaged_model
    assert not algorithms_registry.declaration("SWAD_FTLP").averaged_model  # inherited, not redeclared
    assert all(model_selection.reports_averaged_model(name) for name in averaged)
    assert not model_selection.reports_averaged_model("ERM")
    assert not model_selection.reports_averaged_model("SWAD_not_registered")  # names are not guessed


def test_compared_pairs_come_from_declarations_not_names() -> None:
    pairs = model_selection.paired_comparisons(["ERM", "ERM_FTLP", "MIRO", "CORAL_FTLP", "SWADish_FTLP", "SWADish"])
    # CORAL did not run; SWADish_FTLP is not registered, so its name suggests nothing.
    assert pairs == [("ERM_FTLP", "ERM"), ("ERM_FTLP", "MIRO")]
    assert algorithms_registry.declaration("ERM_FTLP").variant_of == "ERM"
    assert algorithms_registry.declaration("MIRO").baseline_of == "ERM_FTLP"
    control = algorithms_registry.declaration("ERM_FTLP_ShuffledPrior").control_of
    assert model_selection.paired_comparisons([control, "ERM_FTLP_ShuffledPrior"]) == [(control, "ERM_FTLP_ShuffledPrior")]
    # Every registered algorithm: variants (sorted) first, then controls and published baselines.
    pairs = comparisons(algorithm_names())
    assert pairs == model_selection.paired_comparisons(algorithm_names())
    variants = [(f"{name[:-5]}", name) for name in algorithm_names() if name.endswith("_FTLP")]
    assert pairs[:-2] == sorted((v, b) for b, v in variants)
    assert pairs[-2:] == [("ERM_FTLP", "ERM_FTLP_ShuffledPrior"), ("ERM_FTLP", "MIRO")]


def test_a_registration_declares_its_facts() -> None:
    from domainbed.algorithms.erm import ERM

    made = [type(name, (ERM,), {"__module__": __name__}) for name in ("ToyBase", "ToyVariant", "ToyControl", "ToyAvg")]
    try:
        register_algorithm(made[0])
        register_algorithm(made[1], variant_of="ToyBase")
        register_algorithm(control_of="ToyVariant")(made[2])
        register_algorithm(averaged_model=True)(made[3])
        names = ["ToyControl", "ToyVariant", "ToyBase", "ToyAvg", "ERM"]
        assert comparisons(names) == [("ToyVariant", "ToyBase"), ("ToyVariant", "ToyControl")]
        assert [reports_averaged_model(n) for n in names] == [False, False, False, True, False]
    finally:
        for klass in made:
            algorithms_registry.ALGORITHMS._items.pop(klass.__name__, None)
    assert comparisons(names) == [] and not reports_averaged_model("ToyAvg")  # facts leave with the name


def _records(algorithms: list[str]) -> pd.DataFrame:
    """One ordinary checkpoint per run, no averaged record: every run "lacks" its average."""
    return pd.DataFrame(
        {
            "dataset": "Toy", "algorithm": algorithms, "test_env": 0, "trial_seed": 0, "hparams_seed": 0,
            "output_dir": [f"run_{a}" for a in algorithms], "step": 10, "averaged": False,
            "n_test_envs": 1, "test_envs": [[0]] * len(algorithms), "record_index": 0,
            "env0_in_acc": 0.5, "env0_out_acc": 0.5, "env1_in_acc": 0.5, "env1_out_acc": 0.5,
        }
    )


def test_runs_missing_their_average_are_found_by_trait_not_by_name() -> None:
    df = _records(["SWAD", "SWAD_FTLP", "ERM", "SWADish"])
    assert model_selection.prepare_records(df, model_selection.reports_averaged_model).averaged_fallback_dirs == [
        "run_SWAD", "run_SWAD_FTLP"]
    # the results package knows no algorithm: the caller says which ones average.
    assert selection.prepare_records(df).averaged_fallback_dirs == []
    assert selection.prepare_records(df, lambda a: a == "SWADish").averaged_fallback_dirs == ["run_SWADish"]


def test_selection_methods_are_a_registry() -> None:
    assert list(selection.SELECTION_METHODS) == ["leave_one_out", "oracle", "training_domain", "training_domain_auto_lr"]
    assert selection.SELECTION_METHODS["oracle"] is model_selection.get_selection_method("oracle")
    with pytest.raises(ValueError, match="unknown selection method 'best'; valid selection methods: leave_one_out"):
        model_selection.get_selection_method("best")


def test_version_has_one_source() -> None:
    version_file = (PACKAGE / "version.py").read_text()
    assert f'__version__ = "{domainbed.__version__}"' in version_file
    setup_py = (REPO / "setup.py").read_text()
    assert '"domainbed" / "version.py"' in setup_py and not re.search(r"version\s*=\s*[\"']", setup_py)
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["version"] == domainbed.__version__
    assert f"## [{domainbed.__version__}]" in (REPO / "CHANGELOG.md").read_text()


def test_every_paper_an_algorithm_cites_is_in_the_citation_file() -> None:
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["license"] == "MIT"
    refs = citation["references"]
    assert all(ref["title"] and ref["authors"] and ref["year"] for ref in refs)
    cited = {m for ref in refs for m in re.findall(r"arxiv\.org/abs/(\d{4}\.\d{4,5})", ref.get("url", ""))}
    assert {"2406.05628", "2007.01434", "2102.08604", "2203.10789", "1607.01719"} <= cited
    in_code = set()
    for name in algorithm_names():
        cls = get_algorithm_class(name)
        text = (sys.modules[cls.__module__].__doc__ or "") + (cls.__doc__ or "")
        in_code |= set(re.findall(r"arXiv[: ]*(\d{4}\.\d{4,5})", text))
    assert in_code and in_code <= cited, f"add to CITATION.cff: {sorted(in_code - cited)}"


# Files that still cite the design notes kept outside the repository; each is to point
# to docs/design.md instead. The list must only shrink (an entry that is fixed fails).
OUTSIDE_NOTES = "DESIGN" + ".md"
KNOWN_OUTSIDE_REFERENCES: set[str] = set()


def _text_files() -> list[Path]:
    suffixes = {".py", ".md", ".json", ".ipynb", ".toml", ".cfg", ".ini", ".cff", ".sh", ".txt"}
    skip = {".git", ".venv", "build", "dist", "__pycache__", "records", "records_affine_encoder", "results"}
    return [
        p for p in REPO.rglob("*")
        if p.is_file() and (p.suffix in suffixes or p.name == "Makefile")
        and not skip & set(p.relative_to(REPO).parts)
    ]


def test_design_references_point_into_the_repository() -> None:
    design = (REPO / "docs" / "design.md").read_text()
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", design, re.M)}
    assert sections == set(range(1, len(sections) + 1)) and len(sections) >= 9
    outside, bad = set(), []
    for path in _text_files():
        text = path.read_text(errors="replace")
        rel = str(path.relative_to(REPO))
        if OUTSIDE_NOTES in text:
            outside.add(rel)
        for ref in re.findall(r"docs/design\.md (?:§|section )(\d+)", text):
            if int(ref) not in sections:
                bad.append(f"{rel}: §{ref}")
    assert not bad, f"references to sections docs/design.md does not have: {bad}"
    assert outside - KNOWN_OUTSIDE_REFERENCES == set(), "cite docs/design.md, not notes outside the repository"
    assert KNOWN_OUTSIDE_REFERENCES <= outside, f"fixed, remove from the list: {sorted(KNOWN_OUTSIDE_REFERENCES - outside)}"


def test_the_five_registries_are_the_one_registry_class() -> None:
    from domainbed.algorithms import registry as algorithms_registry
    from domainbed.datasets import base as datasets_base
    from domainbed.launchers import registry as launchers_registry
    from domainbed.lib.registry import Registry
    from domainbed.scripts import sweep

    found = {
        "algorithms": [algorithms_registry.ALGORITHMS],
        "datasets": [v for v in vars(datasets_base).values() if isinstance(v, Registry)],
        "launchers": [launchers_registry.LAUNCHERS],
        "selection": [selection.SELECTION_METHODS],
        "sweep commands": [sweep.COMMANDS],
    }
    assert all(len(registries) == 1 and isinstance(registries[0], Registry) for registries in found.values()), found
    assert list(sweep.COMMANDS) == ["delete_incomplete", "launch", "status"]
    with pytest.raises(ValueError, match="unknown sweep command 'run'; valid sweep commands: delete_incomplete"):
        sweep.COMMANDS.get("run")
