"""The naming rule of FT-LP variants, for lib code that cannot read the algorithm registry.

The registry names the FT-LP variant of a base algorithm ``B`` ``B_FTLP``
(``algorithms/ftlp.make_ftlp_variant``; ``FTLP_BASE`` on the variant says the same).
Code above ``lib`` reads the trait (``domainbed.model_selection.paired_comparisons``);
this name rule serves the notebook helpers in ``lib/plotting.py``, which get only records.
"""

from __future__ import annotations

from typing import Iterable

FTLP_SUFFIX = "_FTLP"


def ftlp_variant_pairs(algorithms: Iterable[str]) -> list[tuple[str, str]]:
    """(``B_FTLP``, ``B``) for every ``B_FTLP`` in ``algorithms`` whose base ``B`` is there too, sorted."""
    present = set(algorithms)
    pairs = [(a, a[: -len(FTLP_SUFFIX)]) for a in sorted(present) if a.endswith(FTLP_SUFFIX)]
    return [(t, b) for t, b in pairs if b in present]
