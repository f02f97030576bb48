"""Why a process of an app could not be started, with the last lines it printed (for the
log and the error page)."""

from __future__ import annotations


class SpawnError(RuntimeError):
    def __init__(self, message: str, output: list[str]) -> None:
        super().__init__(message)
        self.output = output
