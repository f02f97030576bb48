"""What app processes print: each line forwarded to the logging agent as
`App <pid> output: ...`, the last lines kept while a process starts (for a spawn error
report), and the thread dumps asked for by `passenger-status --show=backtraces` picked
out from between the loader's markers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from passenger.common.log_records import LogLineWriter, app_output_line
from passenger.helper_agent import wsgi_loader

MAX_OUTPUT_KEPT = 50


class BacktraceCapture:
    """Collects a process's output between the loader's backtrace markers."""

    def __init__(self) -> None:
        self.lines: list[str] | None = None
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def take(self, line: str) -> None:
        if line == wsgi_loader.BACKTRACES_BEGIN:
            self.lines = []
        elif line == wsgi_loader.BACKTRACES_END and self.lines is not None:
            if not self.done.done():
                self.done.set_result("\n".join(self.lines))
        elif self.lines is not None:
            self.lines.append(line)


class AppOutput:
    """The output pipes of one app's processes."""

    def __init__(self, log_writer: LogLineWriter) -> None:
        self.log_writer = log_writer
        self.backtraces_due: dict[int, BacktraceCapture] = {}  # by PID, asked, not yet out

    def forward(self, pid: int, fd: int, kept: list[str], keeping: Callable[[], bool]) -> None:
        """Each line on `fd` goes to the log; while `keeping()`, the last lines are kept
        in `kept` too. The pipe is closed at EOF."""
        loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        pending = bytearray()

        def readable() -> None:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            pending.extend(data)
            lines = pending.split(b"\n")
            if data:
                pending[:] = lines.pop()
            else:
                loop.remove_reader(fd)
                os.close(fd)
                pending.clear()
                lines = [line for line in lines if line]
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                self.log_writer.write(app_output_line(pid, line))
                if keeping():
                    kept.append(line)
                    del kept[:-MAX_OUTPUT_KEPT]
                if pid in self.backtraces_due:
                    self.backtraces_due[pid].take(line)

        loop.add_reader(fd, readable)

    def expect_backtraces(self, pid: int) -> BacktraceCapture:
        capture = self.backtraces_due[pid] = BacktraceCapture()
        return capture

    def backtraces_taken(self, pid: int, capture: BacktraceCapture) -> None:
        if self.backtraces_due.get(pid) is capture:
            del self.backtraces_due[pid]
