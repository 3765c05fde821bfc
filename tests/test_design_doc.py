"""docs/design.md §2 stays true: every module and package folder of ``domainbed`` is named there."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "domainbed"


def layout_section() -> str:
    text = (REPO / "docs" / "design.md").read_text()
    start = text.index("## 2. Layout and layers")
    return text[start:text.index("\n## 3.", start)]


def unnamed(section: str, package: Path = PACKAGE) -> list[str]:
    """The modules (by file) and folders (as ``name/``) of ``package`` that ``section`` does not name."""
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", section))
    folders = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)/", section))
    missing = [str(p.relative_to(package.parent)) for p in sorted(package.rglob("*.py"))
               if p.name != "__init__.py" and p.stem not in words]
    missing += [str(p.parent.relative_to(package.parent)) + "/" for p in sorted(package.rglob("__init__.py"))
                if p.parent != package and p.parent.name not in folders]
    return missing


def test_every_module_is_named_in_the_layout_section() -> None:
    assert unnamed(layout_section()) == [], "add these to docs/design.md §2 (one line each: what it holds)"


def test_a_module_left_out_is_listed(tmp_path: Path) -> None:
    package = tmp_path / "domainbed"
    (package / "rooms").mkdir(parents=True)
    for path in ("__init__.py", "named.py", "rooms/__init__.py", "rooms/forgotten.py"):
        (package / path).write_text("")
    assert unnamed("named.py and rooms/", package) == ["domainbed/rooms/forgotten.py"]
    assert unnamed("named, forgotten", package) == ["domainbed/rooms/"]


def test_every_package_folder_says_who_uses_it() -> None:
    import ast

    silent = []
    for init in sorted(PACKAGE.rglob("__init__.py")):
        if init.parent == PACKAGE:
            continue
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        if not re.search(r"\b(who uses it|used by|uses? (it|them|this))\b", doc, re.IGNORECASE):
            silent.append(str(init.parent.relative_to(REPO)))
    assert silent == [], "each package's docstring says who uses it ('Who uses it: ...')"
