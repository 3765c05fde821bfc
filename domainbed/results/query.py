"""DomainBed's small query language over lists of records: ``Q``.

DomainBed's notebooks and scripts read a sweep as a list of record dicts
(:func:`domainbed.results.record_dicts.load_records`, DomainBed's ``domainbed.lib.reporting``)
and chain queries on it::

    records.filter_equals("args.dataset", "PACS").group("args.hparams_seed").map(lambda seed, rs: rs.len())

Our own reporting works on a pandas frame (:mod:`domainbed.results.records`); this module is
for users' scripts written against DomainBed's API. Every method returns a new ``Q`` (or a
plain value) and leaves the receiver unchanged.

Selectors (:func:`make_selector_fn`): a function, or a string naming a key (``"step"``), a
path through nested dicts (``"args.dataset"``) or several of those separated by commas
(``"args.dataset, args.algorithm"``, which selects a tuple).
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

Selector = str | Callable[[Any], Any]


def _path_selector(path: str) -> Callable[[Any], Any]:
    keys = [part.strip() for part in path.split(".")]

    def select(obj: Any) -> Any:
        for key in keys:
            obj = obj[key]
        return obj

    return select


def make_selector_fn(selector: Selector) -> Callable[[Any], Any]:
    """A function from a selector: callables pass through; ``"a.b"`` reads ``obj["a"]["b"]``;
    ``"x,y"`` returns the tuple ``(obj["x"], obj["y"])``. Anything else is a ``TypeError``."""
    if callable(selector):
        return selector
    if not isinstance(selector, str):
        raise TypeError(f"a selector is a key path such as 'args.dataset' or a function, not {type(selector).__name__}")
    if "," in selector:
        parts = [_path_selector(part) for part in selector.split(",")]
        return lambda obj: tuple(part(obj) for part in parts)
    return _path_selector(selector)


def hashable(obj: Any) -> Any:
    """``obj`` itself when it can be hashed, else a canonical JSON text of it (dicts, lists)."""
    try:
        hash(obj)
    except TypeError:
        return json.dumps({"_": obj}, sort_keys=True)
    return obj


def _nan_first_key(key: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Sort key that puts NaN values first (as -inf), so that sorting never fails on them."""

    def wrapped(x: Any) -> Any:
        value = key(x)
        if isinstance(value, (float, np.floating)) and math.isnan(value):
            return float("-inf")
        return value

    return wrapped


def _n_params(fn: Callable[..., Any]) -> int:
    try:
        return len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # builtins without a signature take one argument
        return 1


class Q:
    """An immutable-by-convention list of items with DomainBed's query methods."""

    def __init__(self, items: Iterable[Any] = ()):
        self._list = list(items)

    # ------------------------------------------------------------------ list behaviour
    def __len__(self) -> int:
        return len(self._list)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._list)

    def __getitem__(self, key: int | slice) -> Any:
        if isinstance(key, slice):
            return Q(self._list[key])
        return self._list[key]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Q):
            return self._list == other._list
        return self._list == other

    __hash__ = None  # type: ignore[assignment]  # mutable content

    def __str__(self) -> str:
        return str(self._list)

    def __repr__(self) -> str:
        return repr(self._list)

    def _append(self, item: Any) -> None:
        """Add ``item`` in place (used while building groups; queries never mutate)."""
        self._list.append(item)

    # ------------------------------------------------------------------ transforming
    def select(self, selector: Selector) -> "Q":
        """The selected value of every item."""
        fn = make_selector_fn(selector)
        return Q(fn(x) for x in self._list)

    def map(self, fn: Callable[..., Any]) -> "Q":
        """``fn`` of every item; a function of several parameters gets the item unpacked
        (so ``group(...).map(lambda key, records: ...)`` works)."""
        if _n_params(fn) > 1:
            return Q(fn(*x) for x in self._list)
        return Q(fn(x) for x in self._list)

    def group(self, selector: Selector) -> "Q":
        """``(key, Q of items)`` pairs, one per distinct selected key, sorted by key."""
        fn = make_selector_fn(selector)
        groups: dict[Any, tuple[Any, Q]] = {}
        for x in self._list:
            key = fn(x)
            groups.setdefault(hashable(key), (key, Q()))[1]._append(x)
        return Q(groups[k] for k in sorted(groups))

    def group_map(self, selector: Selector, fn: Callable[..., Any]) -> "Q":
        """``group(selector).map(fn)``."""
        return self.group(selector).map(fn)

    def flatten(self) -> "Q":
        """The items of the items, in order."""
        return Q(y for x in self._list for y in x)

    def unique(self) -> "Q":
        """The items without repeats, first occurrences in order."""
        seen: set[Any] = set()
        out = []
        for x in self._list:
            key = hashable(x)
            if key not in seen:
                seen.add(key)
                out.append(x)
        return Q(out)

    def sorted(self, key: Callable[[Any], Any] | None = None) -> "Q":
        """Sorted (stable) by ``key`` (the items themselves by default); NaN sorts first."""
        return Q(sorted(self._list, key=_nan_first_key(key or (lambda x: x))))

    # ------------------------------------------------------------------ filtering
    def filter(self, fn: Callable[[Any], bool]) -> "Q":
        return Q(x for x in self._list if fn(x))

    def filter_equals(self, selector: Selector, value: Any) -> "Q":
        """The items whose selected value equals ``value``."""
        fn = make_selector_fn(selector)
        return self.filter(lambda x: fn(x) == value)

    def filter_in(self, selector: Selector, values: Sequence[Any]) -> "Q":
        """The items whose selected value is one of ``values``."""
        fn = make_selector_fn(selector)
        allowed = [hashable(v) for v in values]
        return self.filter(lambda x: hashable(fn(x)) in allowed)

    def filter_not_none(self) -> "Q":
        return self.filter(lambda x: x is not None)

    def filter_not_nan(self) -> "Q":
        return self.filter(lambda x: not np.isnan(x))

    # ------------------------------------------------------------------ reducing
    def len(self) -> int:
        return len(self._list)

    def min(self) -> Any:
        return min(self._list)

    def max(self) -> Any:
        return max(self._list)

    def sum(self) -> Any:
        return sum(self._list)

    def mean(self) -> float:
        """Mean as a float (NaN when empty, without a warning)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(np.mean(self._list))

    def std(self) -> float:
        """Population standard deviation (ddof 0) as a float (NaN when empty)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(np.std(self._list))

    def mean_std(self) -> tuple[float, float]:
        return self.mean(), self.std()

    def argmax(self, selector: Selector) -> Any:
        """The item with the largest selected value (the first of equals)."""
        return max(self._list, key=make_selector_fn(selector))
