"""Log records on the named pipe `<instance>/logging.fifo`, read by the logging agent.

Frame: one JSON object per line, UTF-8, each line at most PIPE_BUF bytes so that the
kernel writes it atomically and concurrent writers never interleave::

    {"t": 1795797719.82, "pid": 10103, "lvl": "I", "src": "pool", "msg": "text"}\n
    {"t": 1795797719.90, "pid": 10125, "app": 1, "msg": "a line the app printed"}\n

A message too long for one line is cut to fit and marked with "…[truncated]".
Writers never block: `FifoLogWriter` keeps records in a bounded buffer while no reader
has the pipe open (the logging agent is down or restarting) and counts what overflows.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import os
import select
import time
from typing import Any

PIPE_BUF = select.PIPE_BUF
TRUNCATED = "…[truncated]"
LEVEL_LETTERS = {logging.DEBUG: "D", logging.INFO: "I", logging.WARNING: "W",
                 logging.ERROR: "E", logging.CRITICAL: "C"}


def encode_record(record: dict[str, Any]) -> bytes:
    line = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
    if len(line) <= PIPE_BUF:
        return line
    msg = str(record.get("msg", ""))
    excess = len(line) - PIPE_BUF + len(TRUNCATED.encode()) + 8
    cut = msg.encode()[: max(0, len(msg.encode()) - excess)].decode(errors="ignore")
    return encode_record({**record, "msg": cut + TRUNCATED})


def decode_record(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "msg" in record else None


def app_output_record(pid: int, line: str) -> dict[str, Any]:
    return {"t": time.time(), "pid": pid, "app": 1, "msg": line}


class FifoLogWriter:
    """Non-blocking writer of records to the logging agent's FIFO, with a bounded buffer."""

    def __init__(self, fifo_path: str, max_buffered: int = 10_000) -> None:
        self.fifo_path = fifo_path
        self.pending: collections.deque[bytes] = collections.deque()
        self.max_buffered = max_buffered
        self.dropped = 0
        self._fd = -1

    def write(self, record: dict[str, Any]) -> None:
        if len(self.pending) >= self.max_buffered:
            self.dropped += 1
        else:
            self.pending.append(encode_record(record))
        self.flush()

    def flush(self) -> bool:
        """Deliver what is buffered; returns True when nothing is left."""
        if self.dropped and self._ensure_open():
            dropped, self.dropped = self.dropped, 0
            self.pending.appendleft(encode_record({
                "t": time.time(), "pid": os.getpid(), "lvl": "W", "src": "log",
                "msg": f"{dropped} log records were dropped while the logging agent was away"}))
        while self.pending and self._ensure_open():
            try:
                os.write(self._fd, self.pending[0])
            except BlockingIOError:
                return False
            except OSError as exc:
                if exc.errno != errno.EPIPE:
                    raise
                self._close()
                return False
            self.pending.popleft()
        return not self.pending

    def _ensure_open(self) -> bool:
        if self._fd >= 0:
            return True
        try:
            self._fd = os.open(self.fifo_path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # ENXIO: no reader yet; ENOENT: instance being removed
            return False
        return True

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        self.flush()
        self._close()


class FifoLogHandler(logging.Handler):
    """Sends Python logging records to the logging agent."""

    def __init__(self, writer: FifoLogWriter) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.exc_info:
                msg += "\n" + logging.Formatter().formatException(record.exc_info)
            self.writer.write({
                "t": record.created, "pid": record.process or os.getpid(),
                "lvl": LEVEL_LETTERS.get(record.levelno, "I"),
                "src": record.name.rsplit(".", 1)[-1], "msg": msg})
        except Exception:
            self.handleError(record)
