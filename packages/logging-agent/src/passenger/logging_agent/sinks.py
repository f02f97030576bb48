"""Where log records end up: the main log file, and the terminal in the foreground."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO


def format_record(record: dict[str, Any]) -> str:
    """Passenger's line layouts: `App 1234 output: ...` and `[ I <time> <pid> <src> ]: ...`."""
    msg = str(record.get("msg", ""))
    if record.get("app"):
        return f"App {record.get('pid', '?')} output: {msg}"
    t = float(record.get("t", time.time()))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1e4):04d}"
    return f"[ {record.get('lvl', 'I')} {stamp} {record.get('pid', '?')} " \
           f"{record.get('src', '')} ]: {msg}"


class LogFile:
    """An append-only file, reopened by path on demand (logrotate)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.stream: TextIO = self._open()

    def _open(self) -> TextIO:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        return os.fdopen(fd, "a", encoding="utf-8", errors="replace")

    def write_lines(self, lines: list[str]) -> None:
        self.stream.write("".join(line + "\n" for line in lines))
        self.stream.flush()

    def reopen(self) -> None:
        new = self._open()
        self.stream.close()
        self.stream = new

    def close(self) -> None:
        self.stream.close()


class Terminal:
    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream

    def write_lines(self, lines: list[str]) -> None:
        try:
            self.stream.write("".join(line + "\n" for line in lines))
            self.stream.flush()
        except OSError:
            pass  # the terminal went away; the file still gets everything

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        pass
