"""A tiny typed registry shared by methods, detectors, recognizers and weights.

Each kind keeps one :class:`Registry` of frozen dataclass entries keyed by
name; the CLI's ``--list`` options, ``--method X`` and ``--detector Y`` all
read the same registry.

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

from typing import Generic, Iterator, Protocol, TypeVar

from .errors import UsageError


class _Named(Protocol):
    name: str


T = TypeVar("T", bound=_Named)


class Registry(Generic[T]):
    """Name -> entry mapping with clear errors for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, entry: T) -> T:
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} {entry.name!r} is already registered")
        self._entries[entry.name] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise UsageError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
