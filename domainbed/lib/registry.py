"""A name -> object registry filled by a decorator (algorithms, datasets, launchers, ...)."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from domainbed.lib.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """``@registry.register()`` records an object under its ``__name__`` (or a given name).

    Duplicates are an error; :meth:`get` (and ``registry[name]``) of an unknown name raises
    a :class:`~domainbed.lib.errors.UserError` that lists the valid names, so a typo on the command line tells the
    user what to type. Iterating gives the names, sorted, so ``choices=list(registry)``
    works in argparse.
    """

    def __init__(self, kind: str, plural: str | None = None):
        self.kind = kind
        self.plural = plural or kind + "s"
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            key = name or obj.__name__  # type: ignore[attr-defined]
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = obj
            return obj

        return decorate

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UserError(f"unknown {self.kind} {name!r}; valid {self.plural}: {', '.join(self.names())}") from None

    __getitem__ = get
