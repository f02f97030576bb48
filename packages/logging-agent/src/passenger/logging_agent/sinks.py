"""A log channel: one named pipe drained into one file with splice(2), so a line is always
either in the pipe or in the file (see `passenger.common.log_records`).

A write error (a full disk, a quota, an I/O error) leaves the unwritten lines in the pipe:
the channel records the failure and the agent retries it each second (see main), so
nothing is lost that the pipe could hold, and the agent never exits over it.
"""

from __future__ import annotations

import fcntl
import os
import termios
import time

from passenger.common import safe_files

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

SPLICE_CHUNK = 1 << 20


def open_log_file(path: str) -> int:
    """No O_APPEND (splice refuses it); we are the file's only writer and start at its end.
    Opened through `safe_files`: an app dir's owner cannot point us elsewhere."""
    fd = safe_files.open_file(path, os.O_RDWR | os.O_CREAT)  # read: for echo
    os.lseek(fd, 0, os.SEEK_END)
    return fd


class WriteFailure:
    """A spell during which the file could not be written. (A plain class: dataclasses
    would cost this agent 1.6 MB.)"""

    def __init__(self, error: str, began: float) -> None:
        self.error = error       # the first error, e.g. "No space left on device"
        self.began = began
        self.attempts = 1        # failed writes, retries included
        self.most_waiting = 0    # most bytes seen waiting in the pipe meanwhile


class LogChannel:
    def __init__(self, fifo_path: str, file_path: str, echo: BinaryIO | None = None) -> None:
        self.fifo_path = fifo_path
        self.file_path = file_path
        self.file_fd = open_log_file(file_path)
        self.fifo_fd = os.open(fifo_path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.echo = echo
        self.failure: WriteFailure | None = None

    def pump(self) -> int:
        """Move everything the pipe holds into the file; returns the bytes moved. A
        write error is recorded in `failure` (cleared by the next pump that works)."""
        moved = 0
        try:
            while True:
                start = os.lseek(self.file_fd, 0, os.SEEK_CUR)
                if os.fstat(self.file_fd).st_size < start:  # truncated (copytruncate):
                    start = os.lseek(self.file_fd, 0, os.SEEK_END)  # go on with no hole
                # (splice(2) refuses an O_APPEND file, so a truncation landing between
                # this check and the splice can still leave a hole: the window is one
                # chunk's check, not a whole pump.)
                try:
                    n = os.splice(self.fifo_fd, self.file_fd, SPLICE_CHUNK,
                                  flags=os.SPLICE_F_NONBLOCK)
                except BlockingIOError:
                    break
                if n == 0:
                    break
                moved += n
                if self.echo is not None:
                    self._echo(os.pread(self.file_fd, n, start))
        except OSError as exc:
            if self.failure is None:
                self.failure = WriteFailure(exc.strerror or str(exc), time.time())
            else:
                self.failure.attempts += 1
            self.failure.most_waiting = max(self.failure.most_waiting, self.waiting_bytes())
            return moved
        self.failure = None
        return moved

    def waiting_bytes(self) -> int:
        try:
            buf = fcntl.ioctl(self.fifo_fd, termios.FIONREAD, b"\0\0\0\0")
        except OSError:
            return 0
        return int.from_bytes(buf, "little")

    def write_line(self, line: str) -> None:
        """A line of our own, between what the pipe delivers (which ends in whole lines
        once the pipe is drained)."""
        os.write(self.file_fd, line.encode() + b"\n")

    def _echo(self, data: bytes) -> None:
        try:
            assert self.echo is not None
            self.echo.write(data)
            self.echo.flush()
        except (OSError, ValueError):
            self.echo = None  # the terminal went away; the file still gets everything

    def reopen(self) -> None:
        """For logrotate: lines before this went to the old (renamed) file, the rest to
        a new file at the configured path."""
        new_fd = open_log_file(self.file_path)
        os.close(self.file_fd)
        self.file_fd = new_fd

    def close(self) -> None:
        os.close(self.file_fd)
        os.close(self.fifo_fd)
