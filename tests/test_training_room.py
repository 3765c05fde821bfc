"""The training room: the run machinery lives in ``domainbed/training/`` and only the layers
above it import it; ``domainbed.lib.misc`` is DomainBed's face for users, never our base."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "domainbed"
# The rooms above training: they run it (scripts), launch it (launchers) or read what it
# wrote (inference); DomainBed's misc re-exports a few of its helpers for users.
ABOVE_TRAINING = ("domainbed/scripts/", "domainbed/launchers/", "domainbed/inference/", "domainbed/lib/misc.py")


def imports_of(path: Path) -> set[str]:
    """The modules ``path`` imports, at module level or inside a function (``from a import b``
    counts as ``a`` and ``a.b``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def importers(target: str, roots: list[Path]) -> set[str]:
    return {
        str(path.relative_to(REPO))
        for root in roots
        for path in root.rglob("*.py")
        if any(name == target or name.startswith(target + ".") for name in imports_of(path))
    }


def test_training_is_imported_only_by_the_layers_above_it() -> None:
    outside = {path for path in importers("domainbed.training", [PACKAGE]) if not path.startswith("domainbed/training/")}
    assert outside, "the walk finds the scripts that run training"
    below = sorted(path for path in outside if not path.startswith(ABOVE_TRAINING))
    assert below == [], f"{below} import domainbed.training: move the shared piece to lib/, or the code above training"


def test_nothing_of_ours_imports_domainbeds_misc() -> None:
    roots = [PACKAGE, REPO / "benchmarks", REPO / "docs" / "evidence"]
    users = sorted(importers("domainbed.lib.misc", roots))
    assert users == [], f"{users}: import the helper from its home (lib/seeding.py, datasets/splits.py, ...)"


def test_the_run_machinery_left_lib() -> None:
    moved = ["checkpoint", "integrity", "run_lock", "preemption", "tb_trim", "loaders", "evaluation", "metrics", "tee"]
    assert [name for name in moved if (PACKAGE / "lib" / f"{name}.py").exists()] == []
    assert not (PACKAGE / "training" / "reporting.py").exists(), "results/ is the reporting room"
