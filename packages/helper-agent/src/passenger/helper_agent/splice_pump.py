"""Moving a large response body from an app process's socket to its client's socket with
splice(2), through a pipe, so that the bytes never enter Python (no read into a bytes
object, no write out of one: the kernel moves page references).

The pump works on duplicates of the two descriptors: the event loop refuses to watch a
descriptor a transport owns, and the app's transport is paused meanwhile, so nothing
else reads from it. The client's transport must hold nothing when the pump starts, and
nothing else writes to the client while it runs (responses on a connection go out one at
a time).

Response buffering still holds: a client that stops taking bytes makes the pump stop
(`STALL` at once, or `STALL_TOTAL` in all), and what was already in the pipe goes back to
the caller, which carries on through the transport and the spool; the app process is
then free as soon as the app has finished, as before.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Callable

PIPE_SIZE = 1 << 20  # /proc/sys/fs/pipe-max-size allows this much to anyone by default
STALL = 0.02         # seconds a client may take no bytes before the pump gives up ...
STALL_TOTAL = 0.1    # ... or in all, over the pump's life
FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

# on_stop(moved, leftover, finished): `moved` bytes reached the client; `leftover` were
# taken from the app but not delivered; `finished`: all that was asked for was moved.
OnStop = Callable[[int, bytes, bool], None]


class SplicePump:
    """Moves bytes from `source` (kept for the pump's life, with the pipe) to a target
    given for each `run`, then calls `on_stop`."""

    __slots__ = ("blocked", "in_pipe", "left", "loop", "moved", "on_stop", "pipe_r",
                 "pipe_size", "pipe_w", "reading", "source", "stall_timer", "stalled_since",
                 "target", "writing")

    def __init__(self, loop: asyncio.AbstractEventLoop, source: int) -> None:
        self.loop = loop
        self.source = os.dup(source)
        try:
            self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            os.close(self.source)
            raise
        try:
            self.pipe_size = fcntl.fcntl(self.pipe_w, F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:  # a lower limit set by the administrator: the default size
            self.pipe_size = 65536
        self.target = -1
        self.left = 0
        self.in_pipe = 0
        self.moved = 0
        self.reading = self.writing = False
        self.blocked = 0.0         # seconds spent waiting for the client, in this run
        self.stalled_since = 0.0
        self.stall_timer: asyncio.TimerHandle | None = None
        self.on_stop: OnStop | None = None

    def run(self, target: int, count: int, on_stop: OnStop) -> None:
        """Move `count` bytes to `target`. The target is duplicated for this run only:
        a copy kept after it would hold the client's connection open."""
        self.target = os.dup(target)
        self.left, self.moved, self.blocked, self.on_stop = count, 0, 0.0, on_stop
        self._step()

    def _step(self) -> None:
        while True:
            read_blocked = write_blocked = False
            if self.left and self.in_pipe < self.pipe_size:
                try:
                    n = os.splice(self.source, self.pipe_w,
                                  min(self.left, self.pipe_size - self.in_pipe), flags=FLAGS)
                except BlockingIOError:
                    read_blocked = True
                except OSError:
                    self._stop()
                    return
                else:
                    if n == 0:  # the app's side ended mid-frame: the caller sees it next
                        self._stop()
                        return
                    self.left -= n
                    self.in_pipe += n
            if self.in_pipe:
                try:
                    n = os.splice(self.pipe_r, self.target, self.in_pipe, flags=FLAGS)
                except BlockingIOError:
                    write_blocked = True
                except OSError:  # the client is gone (or takes no splice): the
                    self._stop()  # caller carries on without us, and finds out
                    return
                else:
                    self.in_pipe -= n
                    self.moved += n
            if not self.left and not self.in_pipe:
                self._stop(finished=True)
                return
            if (read_blocked or not self.left or self.in_pipe >= self.pipe_size) and \
                    (write_blocked or not self.in_pipe):
                break
        self._wait(reading=read_blocked and self.in_pipe < self.pipe_size,
                   writing=write_blocked)

    def _wait(self, reading: bool, writing: bool) -> None:
        if reading != self.reading:
            if reading:
                self.loop.add_reader(self.source, self._step)
            else:
                self.loop.remove_reader(self.source)
            self.reading = reading
        if writing != self.writing:
            if writing:
                self.loop.add_writer(self.target, self._writable)
                self.stalled_since = self.loop.time()
                self.stall_timer = self.loop.call_at(self.stalled_since + STALL,
                                                     self._stalled)
            else:
                self.loop.remove_writer(self.target)
                self._unstall()
            self.writing = writing

    def _writable(self) -> None:
        self._unstall()
        if self.blocked > STALL_TOTAL:
            self._stalled()
            return
        self.loop.remove_writer(self.target)
        self.writing = False
        self._step()

    def _unstall(self) -> None:
        if self.stall_timer is not None:
            self.stall_timer.cancel()
            self.stall_timer = None
            self.blocked += self.loop.time() - self.stalled_since

    def _stalled(self) -> None:
        """The client does not keep up: hand back what is in the pipe."""
        self.stall_timer = None
        self._stop()

    def _stop(self, finished: bool = False) -> None:
        self._wait(reading=False, writing=False)
        leftover = b""
        if self.in_pipe:
            leftover = _read_exactly(self.pipe_r, self.in_pipe)
            self.in_pipe = 0
        self._let_target_go()
        on_stop, self.on_stop = self.on_stop, None
        if on_stop is not None:
            on_stop(self.moved, leftover, finished)

    def _let_target_go(self) -> None:
        if self.target >= 0:
            os.close(self.target)
            self.target = -1

    def close(self) -> None:
        """Stop at once, telling no one (the exchange is over), and let the fds go."""
        self.on_stop = None
        if self.source >= 0:
            self._wait(reading=False, writing=False)
            self._let_target_go()
            for fd in (self.source, self.pipe_r, self.pipe_w):
                os.close(fd)
            self.source = self.pipe_r = self.pipe_w = -1


def _read_exactly(fd: int, size: int) -> bytes:
    """What a pipe holds (the pipe is ours: all of it is there)."""
    chunks = []
    while size:
        data = os.read(fd, size)
        if not data:
            break
        chunks.append(data)
        size -= len(data)
    return b"".join(chunks)
