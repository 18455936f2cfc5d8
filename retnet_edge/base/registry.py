"""One registry pattern for every pluggable stage: checkpoint formats, export targets, runtimes.

Each entry registers itself where it is defined (`@TARGETS.register("onnx")` over a class, or
`FORMATS.register("fla")(Format(...))` for an entry that is data); the CLI reads its choices and help
from the registry, so adding an entry is one file plus its decorator. Lookups of unknown names raise
one error listing what is known.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from ..errors import ConfigError, RetNetEdgeError

E = TypeVar("E")


class Registry(Generic[E]):
    """name -> entry, in registration order."""

    def __init__(self, kind: str, error: type[RetNetEdgeError] = ConfigError):
        self.kind, self.error = kind, error
        self._entries: dict[str, E] = {}

    def register(self, name: str) -> Callable[[E], E]:
        """Decorator (or call) adding an entry under `name`; a second entry of the same name is a bug."""
        def add(entry: E) -> E:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> E:
        if name not in self._entries:
            raise self.error(f"unknown {self.kind} {name!r}; expected one of {', '.join(self._entries)}")
        return self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> list[tuple[str, E]]:
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
