"""Print a :class:`~domainbed.results.tables.model.Table` as plain text, Markdown or LaTeX.

A cell prints as ``mean ± SE`` in percent with one decimal (``+/-`` in plain text,
``$\\pm$`` in LaTeX), ``X`` when missing, with a ``(n=k)`` suffix when it rests on fewer
trials than the row's ``n``. The grids themselves are drawn by ``tabulate``.
"""

from __future__ import annotations

import re

from tabulate import tabulate

from domainbed.results.tables.model import Table
from domainbed.results.tables.stats import Stat

FORMATS = ("text", "markdown", "latex")
_PM = {"text": "+/-", "markdown": "±", "latex": r"$\pm$"}


def format_number(value: float, signed: bool = False, scale: float = 100.0, decimals: int = 1) -> str:
    """A fraction as percent with one decimal (or ``value * scale`` with ``decimals``); no "-0.0"."""
    text = f"{scale * value:+.{decimals}f}" if signed else f"{scale * value:.{decimals}f}"
    zero = f"{0:.{decimals}f}"
    return zero if text.lstrip("+-") == zero else text


def format_stat(stat: Stat | None, fmt: str = "text", signed: bool = False, row_n: int | None = None,
                scale: float = 100.0, decimals: int = 1) -> str:
    """``mean ± se`` in percent (or as :func:`format_number` with ``scale``, ``decimals``);
    ``X`` for None; ``(n=k)`` when fewer trials than the row's n."""
    if stat is None:
        return "X"
    text = format_number(stat.mean, signed, scale, decimals)
    if stat.se is not None:
        text += f" {_PM[fmt]} {format_number(stat.se, False, scale, decimals)}"
    if stat.n is not None and row_n is not None and stat.n < row_n:
        text += f" (n={stat.n})"
    return text


def table_cells(table: Table, fmt: str = "text") -> tuple[list[str], list[list[str]]]:
    """Header and body of ``table`` as strings."""
    header = [table.label_header, *table.columns, "Avg", "n"]
    body = []
    for row in table.rows:
        n = row.n
        cells = [format_stat(c, fmt, row.signed, n, table.scale, table.decimals) for c in row.cells]
        avg = "X" if row.avg is None else format_number(row.avg, row.signed, table.scale, table.decimals)
        body.append([row.label, *cells, avg, "-" if n is None else str(n)])
    return header, body


def _grid(header: list[str], body: list[list[str]], style: str, **options: object) -> str:
    # Cells are already formatted strings: no number parsing, no realignment.
    return tabulate(body, header, tablefmt=style, disable_numparse=True, stralign="left", **options)


def format_grid(header: list[str], body: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces, with a rule under the header."""
    return "\n".join(line.rstrip() for line in _grid(header, body, "simple").splitlines())


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials, then typeset ±, − and — properly."""
    out = re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX_SPECIAL[m.group()], text)
    return out.replace("±", r"$\pm$").replace("−", "$-$").replace("—", "---")


def _latex_tabular(header: list[str], body: list[list[str]]) -> str:
    """A booktabs ``tabular``: the label column left, the others centred. Labels are escaped
    here; cells come formatted for LaTeX (``$\\pm$``) and pass through as they are."""
    header = [latex_escape(h) for h in header]
    body = [[latex_escape(r[0]), *r[1:]] for r in body]
    # "latex_raw" leaves cells alone; its \hline rules become booktabs' rules.
    text = _grid(header, body, "latex_raw", colalign=("left",) + ("center",) * (len(header) - 1))
    lines = text.splitlines()
    hlines = [i for i, line in enumerate(lines) if line.strip() == r"\hline"]
    for i, rule in zip(hlines, (r"\toprule", r"\midrule", r"\bottomrule")):
        lines[i] = rule
    return "\n".join(line.strip() for line in lines)


def _plain(text: str) -> str:
    """Plain-text tables keep to ASCII: ``+/-`` for ±, ``-`` for the minus sign and the dash."""
    return text.replace("±", "+/-").replace("−", "-").replace("—", "-")


def render(table: Table, fmt: str = "text") -> str:
    """``table`` as plain text, Markdown or a LaTeX ``table`` environment (needs booktabs)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; choose from {', '.join(FORMATS)}")
    header, body = table_cells(table, fmt)
    if fmt == "text":
        body = [[_plain(r[0]), *r[1:]] for r in body]  # a gain row's label "A − B"
        return f"{_plain(table.caption)}\n\n{format_grid(header, body)}"
    if fmt == "markdown":
        body = [[c.replace("|", r"\|") for c in r] for r in body]
        return f"**{table.caption}**\n\n{_grid(header, body, 'github')}"
    caption = r"\caption{" + latex_escape(table.caption) + "}"
    return "\n".join([r"\begin{table}[ht]", r"\centering", caption, _latex_tabular(header, body), r"\end{table}"])
