"""The README is a front door that stays true: its dataset and algorithm tables name exactly
what the registries hold, its FT-LP column says which ``<Name>_FTLP`` variants exist, it
stays short, and every relative link of it and of the pages it leads to points at a file
and heading that exist.

A new algorithm or dataset fails here until it has its row; the message lists the names
missing on either side.
"""

from __future__ import annotations

import re
from pathlib import Path

from domainbed.algorithms import algorithm_names
from domainbed.datasets import dataset_names

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAX_README_LINES = 200
# The README and the pages it links to, whose links are checked.
PAGES = (
    "README.md",
    "docs/usage.md",
    "docs/datasets.md",
    "docs/ftlp.md",
    "docs/robustness.md",
    "docs/evidence/README.md",
    "benchmarks/README.md",
)
FTLP_SUFFIX = "_FTLP"


def table_rows(text: str, header_start: str) -> list[list[str]]:
    """The cells of each body row of the Markdown table whose header line starts with
    ``header_start`` (the header and the separator row are left out)."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(header_start)]
    assert len(starts) == 1, f"expected one table starting {header_start!r} in README.md, found {len(starts)}"
    rows = []
    for line in lines[starts[0] + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def difference_message(what: str, in_readme: set[str], registered: set[str]) -> str:
    missing = sorted(registered - in_readme)
    unknown = sorted(in_readme - registered)
    return (f"README.md's {what} table and the registry disagree: registered but not in the table: {missing}; "
            f"in the table but not registered: {unknown}")


def readme_datasets() -> set[str]:
    """Every name in backticks in the first column (the image-folder row has none)."""
    rows = table_rows(README.read_text(), "| Dataset (`--dataset`)")
    return {name for row in rows for name in re.findall(r"`([^`]+)`", row[0])}


def readme_algorithms() -> dict[str, str]:
    """Each algorithm name of the first column (a cell may hold several, comma-separated)
    with the row's FT-LP cell."""
    rows = table_rows(README.read_text(), "| algorithm | paper | file | FT-LP |")
    return {name.strip().strip("`"): row[3] for row in rows for name in row[0].split(",")}


def generated_variant(name: str, registered: set[str]) -> bool:
    """``<Base>_FTLP`` made by FT-LP's rule from a registered base (not a row of its own)."""
    return name.endswith(FTLP_SUFFIX) and name[: -len(FTLP_SUFFIX)] in registered


def test_dataset_table_names_every_registered_dataset() -> None:
    in_readme, registered = readme_datasets(), set(dataset_names())
    assert in_readme == registered, difference_message("dataset", in_readme, registered)


def test_algorithm_table_names_every_registered_algorithm() -> None:
    registered = set(algorithm_names())
    bases = {name for name in registered if not generated_variant(name, registered)}
    in_readme = set(readme_algorithms())
    assert in_readme == bases, difference_message("algorithm", in_readme, bases)


def test_ftlp_column_says_which_variants_exist() -> None:
    registered = set(algorithm_names())
    wrong = []
    for name, cell in readme_algorithms().items():
        exists = f"{name}{FTLP_SUFFIX}" in registered
        if (cell == "yes") != exists:
            wrong.append(f"{name}: the table says {cell!r}, {name}{FTLP_SUFFIX} {'exists' if exists else 'does not exist'}")
    assert not wrong, "README.md's FT-LP column is wrong for: " + "; ".join(wrong)


def test_readme_is_short() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines (at most {MAX_README_LINES}): move the detail into a page under docs/ "
        "and link it")


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens
    (a repeated heading gets -1, -2, ...)."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def test_relative_links_of_the_readme_and_its_pages_resolve() -> None:
    broken = []
    for page in PAGES:
        path = REPO / page
        text = path.read_text()
        prose = re.sub(r"^    .*$", "", text, flags=re.M)  # indented code blocks hold no links
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+:", target):
                continue  # an absolute URL
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{page}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text()):
                broken.append(f"{page}: {target} (no such heading)")
    assert not broken, "broken links: " + "; ".join(broken)
