"""The watchdog's own log lines, in Passenger's layout
(`[ W 2026-11-27 16:41:59.8271 10103 supervisor ]: ...`), to the main log's pipe.

Not Python's `logging`: for the few lines the watchdog writes it would cost 1.2 MB, a
quarter of the watchdog's memory. Every line of a message gets the header (as
`LogLineHandler` does), so no line can pass for another writer's. Until `configure`
gives us the pipe, warnings and errors go to stderr.
"""

from __future__ import annotations

import os
import sys

from passenger.common.log_records import LogLineWriter, agent_line

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class _Destination:
    writer: LogLineWriter | None = None
    threshold = LEVELS["warning"]


_destination = _Destination()


def configure(writer: LogLineWriter, level: str) -> None:
    """Write lines at `level` ("debug", "info", ...) and above to `writer`."""
    _destination.writer = writer
    _destination.threshold = LEVELS.get(level, LEVELS["info"])


class Logger:
    """Lines from one part of the watchdog: `source` is their source field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def debug(self, message: str) -> None:
        self._write(LEVELS["debug"], "D", message)

    def info(self, message: str) -> None:
        self._write(LEVELS["info"], "I", message)

    def warning(self, message: str) -> None:
        self._write(LEVELS["warning"], "W", message)

    def error(self, message: str) -> None:
        self._write(LEVELS["error"], "E", message)

    def _write(self, level: int, letter: str, message: str) -> None:
        if level < _destination.threshold:
            return
        pid = os.getpid()
        text = "\n".join(agent_line(letter, pid, self.source, line)
                         for line in message.split("\n"))
        if _destination.writer is not None:
            _destination.writer.write(text)
        else:
            print(text, file=sys.stderr, flush=True)
