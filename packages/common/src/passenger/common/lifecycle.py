"""Lifecycles as explicit state tables.

A thing with a lifecycle (a request, an app channel, an app process, an agent process)
keeps one `state` and changes it in one `change_state` method, which asks its class's
`Transitions` table whether the edge exists. Each edge carries a label saying what
takes it, so the table reads as the lifecycle's documentation, and a change the table
does not allow raises at once instead of leaving a combination of flags nobody planned.
"""

from __future__ import annotations

TYPE_CHECKING = False  # the watchdog does without the typing module (0.75 MB)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from enum import Enum


class IllegalTransition(RuntimeError):
    """A state change the lifecycle's table has no edge for: a bug, never user input."""


class Transitions:
    """The edges (from, to, label) a lifecycle may take."""

    def __init__(self, name: str, edges: Iterable[tuple[Enum, Enum, str]]) -> None:
        self.name = name
        self.labels: dict[tuple[Enum, Enum], str] = {}
        for old, new, label in edges:
            if (old, new) in self.labels:
                raise ValueError(f"{name}: edge {old.name} -> {new.name} given twice")
            self.labels[(old, new)] = label
        # The same edges by the states' identities: an enum member hashes in Python
        # code, and a request's lifecycle is checked several times per request.
        self._next: dict[int, frozenset[int]] = {}
        for old, new in self.labels:
            self._next[id(old)] = self._next.get(id(old), frozenset()) | {id(new)}

    def check(self, old: Enum, new: Enum) -> None:
        if id(new) not in self._next.get(id(old), ()):
            raise IllegalTransition(f"{self.name}: no edge {old.name} -> {new.name}")

    def allows(self, old: Enum, new: Enum) -> bool:
        return id(new) in self._next.get(id(old), ())

    def describe(self) -> list[str]:
        """One line per edge, for docs and error reports."""
        return [f"{old.name} -> {new.name}: {label}"
                for (old, new), label in self.labels.items()]
