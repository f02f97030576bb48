"""Log lines on the named pipes `<instance>/logging.fifo` (main log) and
`<instance>/access.fifo` (access log), read by the logging agent.

Frame: finished log lines, UTF-8, each ending in "\\n". One `write()` carries one or more
whole lines and at most PIPE_BUF bytes, so the kernel writes it atomically: lines of
concurrent writers never interleave. A message longer than PIPE_BUF is split at line
boundaries into several writes (a single line longer than that is cut into pieces, each
ending in " ↩" and continued on the next line).

Why finished lines rather than structured records: the logging agent moves bytes from the
pipe into the file with splice(2), so a line is either still in the pipe or already in
the file. A `kill -9` of the logging agent can then neither lose nor duplicate a line.

Writers never block: `LogLineWriter` keeps lines in a bounded buffer while the pipe is
full, and counts what overflows (one notice a stall). The watchdog keeps each pipe open
for its lifetime, so lines written while the logging agent restarts wait in the pipe.

Python `logging` records reach a pipe through `log_handler.LogLineHandler`: this module
itself does not import `logging`, which would cost the watchdog and the logging agent
1.2 MB each.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import os
import select
import time

PIPE_BUF = select.PIPE_BUF
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031
CONTINUED = " ↩"
# logging's level numbers (DEBUG, INFO, WARNING, ERROR, CRITICAL) -> Passenger's letters
LEVEL_LETTERS = {10: "D", 20: "I", 30: "W", 40: "E", 50: "C"}


def timestamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1e4):04d}"


def agent_line(level: str, pid: int, source: str, message: str, t: float | None = None) -> str:
    """Passenger's layout: `[ I 2026-11-27 16:41:59.8271 10103 pool ]: message`."""
    return f"[ {level} {timestamp(time.time() if t is None else t)} {pid} {source} ]: {message}"


def app_output_line(pid: int, line: str) -> str:
    return f"App {pid} output: {line}"


def frame_lines(text: str) -> list[bytes]:
    """Split `text` into writes of whole lines, each at most PIPE_BUF bytes."""
    pieces: list[bytes] = []
    for line in text.split("\n"):
        data = line.encode("utf-8", "replace")
        while len(data) + 1 > PIPE_BUF:
            cut = PIPE_BUF - 1 - len(CONTINUED.encode())
            while cut and (data[cut] & 0xC0) == 0x80:  # never split a UTF-8 character
                cut -= 1
            pieces.append(data[:cut] + CONTINUED.encode() + b"\n")
            data = data[cut:]
        pieces.append(data + b"\n")
    writes: list[bytes] = []
    for piece in pieces:
        if writes and len(writes[-1]) + len(piece) <= PIPE_BUF:
            writes[-1] += piece
        else:
            writes.append(piece)
    return writes


def create_pipe(path: str) -> int:
    """Make the FIFO and hold it open read-write: while this fd lives the pipe (and what is
    buffered in it) survives the reader's death, and writers never see EPIPE."""
    os.mkfifo(path, 0o600)
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # a smaller pipe only means writers buffer sooner
    return fd


DEFAULT_BUFFERED_LINES = 10_000


def buffered_lines_allowed() -> int:
    """How many writes a writer holds while its pipe is full: 10,000 (a few MB at most),
    or PASSENGER_LOG_BUFFER_LINES (0 and up) as the agents inherit it."""
    try:
        return max(0, int(os.environ.get("PASSENGER_LOG_BUFFER_LINES", "")))
    except ValueError:
        return DEFAULT_BUFFERED_LINES


class LogLineWriter:
    """Non-blocking writer of lines to a logging pipe, with a bounded buffer.

    While the pipe is full (the logging agent stalled, or is restarting), lines wait here
    up to `max_buffered` writes; beyond that each is counted and dropped. Once what waits
    has gone out, one notice says how many were dropped and between when ("N lines
    dropped between T1 and T2"), in this log or, for the access log, in `notices` (the
    main log): one line per stall, never one per dropped line, and never more than one
    per flush (the agents flush once a second).
    """

    def __init__(self, fifo_path: str, max_buffered: int | None = None, name: str = "log",
                 notices: LogLineWriter | None = None) -> None:
        self.fifo_path = fifo_path
        self.pending: collections.deque[bytes] = collections.deque()
        self.max_buffered = buffered_lines_allowed() if max_buffered is None else max_buffered
        self.name = name
        self.notices = notices
        self.dropped = 0          # in the current stall
        self.dropped_total = 0    # for passenger-status
        self.stall_began = 0.0    # when the current stall's first line was dropped
        self.stall_ended = 0.0    # when its last line was dropped
        self._fd = -1

    def write(self, text: str) -> None:
        for data in frame_lines(text):
            if len(self.pending) < self.max_buffered:
                self.pending.append(data)
                continue
            now = time.time()
            if not self.dropped:
                self.stall_began = now
            self.stall_ended = now
            self.dropped += 1
            self.dropped_total += 1
        self.flush(report=False)

    def flush(self, report: bool = True) -> bool:
        """Deliver what is buffered, then (when `report`: the agents' once-a-second
        flush) the notice of a stall; returns True when nothing is left."""
        while self.pending and self._send(self.pending[0]):
            self.pending.popleft()
        if report and not self.pending and self.dropped:
            self._report_stall()
        return not self.pending

    def _send(self, data: bytes) -> bool:
        """One atomic write, if the pipe takes it now."""
        if not self._ensure_open():
            return False
        try:
            os.write(self._fd, data)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EBADF):
                raise
            self._close()
            return False
        return True

    def _report_stall(self) -> None:
        """The stall is over once its notice is out (with nothing held, as when
        max_buffered is 0, the notice itself finds out whether the pipe has room)."""
        notice = frame_lines(agent_line("W", os.getpid(), "log", (
            f"{self.dropped} {self.name} lines dropped between "
            f"{timestamp(self.stall_began)} and {timestamp(self.stall_ended)}: the logging "
            f"agent was not reading (stopped, restarting, or slower than the server)")))
        if self.notices is not None:
            self.notices.pending.extend(notice)  # one line a stall: past its bound
            self.notices.flush()
        elif not all(self._send(data) for data in notice):
            return  # still full: the stall goes on, and its notice will count on
        self.dropped = 0

    def _ensure_open(self) -> bool:
        if self._fd >= 0:
            return True
        try:
            self._fd = os.open(self.fifo_path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # ENXIO: no reader; ENOENT: the instance is being removed
            return False
        return True

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        self.flush()
        self._close()
