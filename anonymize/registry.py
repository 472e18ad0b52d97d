"""A tiny typed registry shared by methods, detectors, recognizers and weights.

Each kind keeps one :class:`Registry` of frozen dataclass entries keyed by
name; the CLI's ``--list`` options, ``--method X`` and ``--detector Y`` all
read the same registry. An entry may be *deferred* to the module that
registers it (:meth:`Registry.defer`): that module is imported the first time
the entry is needed, so a run loads only what it uses (``blur`` never imports
torch).

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Entry:
    ...     name: str
    >>> reg: Registry[Entry] = Registry("toy")
    >>> _ = reg.register(Entry("a"))
    >>> reg.get("a").name
    'a'
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from .errors import UsageError


class _Named(Protocol):
    name: str


T = TypeVar("T", bound=_Named)


class Registry(Generic[T]):
    """Name -> entry mapping with clear errors for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._order: list[str] = []  # registration (or deferral) order, for listings
        self._deferred: dict[str, str] = {}  # name -> module that registers it when imported

    def register(self, entry: T) -> T:
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} {entry.name!r} is already registered")
        self._entries[entry.name] = entry
        self._deferred.pop(entry.name, None)
        if entry.name not in self._order:
            self._order.append(entry.name)
        return entry

    def defer(self, name: str, module: str) -> None:
        """Declare that importing ``module`` registers ``name`` (done on first use of ``name``)."""
        if name not in self._entries:
            self._deferred[name] = module
            if name not in self._order:
                self._order.append(name)

    def _load(self, name: str) -> None:
        module = self._deferred.get(name)
        if module is not None:
            importlib.import_module(module)
            if name not in self._entries:
                raise RuntimeError(f"importing {module} did not register {self.kind} {name!r}")

    def get(self, name: str) -> T:
        self._load(name)
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._order)) or "(none)"
            raise UsageError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def names(self) -> list[str]:
        return list(self._order)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._deferred

    def __iter__(self) -> Iterator[T]:
        for name in list(self._deferred):
            self._load(name)
        return iter([self._entries[n] for n in self._order if n in self._entries])

    def __len__(self) -> int:
        return len(self._order)
