"""``Registry``: the one idiom for every named plug-in (datasets, partitioners, perturbations, prompt presets,
aggregation rules, federated methods).

A read-only mapping plus :meth:`Registry.register`, which refuses a name already taken unless
``overwrite=True`` (a silent overwrite would change what an existing flag means). Lookups of an unknown
name raise one line naming the kind and the choices. This module imports nothing of hf_fedzo, so every
layer can use it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Named values of one kind; ``kind`` is the flag or argument name used in error messages."""

    def __init__(self, kind: str, entries: Mapping[str, T] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        for name, value in (entries or {}).items():
            self.register(name, value)

    def register(self, name: str, value: T, *, overwrite: bool = False) -> T:
        """Add ``value`` under ``name``; a taken name raises ``ValueError`` unless ``overwrite``. Returns ``value``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind}: a name must be a non-empty string (got {name!r})")
        if name in self._entries and not overwrite:
            raise ValueError(f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it")
        self._entries[name] = value
        return value

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests and plug-ins that register temporarily)."""
        del self._entries[name]

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"{self.kind}: unknown name {name!r}; choose from {sorted(self._entries)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, name: str) -> None:
        """Raise ``ValueError`` (what dataclass configs raise for a bad flag) unless ``name`` is registered."""
        if name not in self._entries:
            raise ValueError(f"{self.kind} must be one of {sorted(self._entries)} (got {name!r})")

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._entries)})"
