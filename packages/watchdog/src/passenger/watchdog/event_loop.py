"""The watchdog's event loop: descriptors to read, deadlines, and signals, on epoll.

asyncio would cost the watchdog 7 MB of private memory; what it waits for is a handful
of descriptors (each agent's pidfd and feedback pipe, a systemd ping) and a few
deadlines (start and stop timeouts, restart backoff, the log flush). `select.epoll`
directly: the `selectors` wrapper around it would add 0.1 MB and nothing we use.

Signals arrive as bytes on a wakeup pipe (`signal.set_wakeup_fd`, as signalfd would
deliver them): the Python-level handler does nothing, and the loop reads the signal
numbers and calls their handlers between other callbacks, never inside a signal handler.
"""

from __future__ import annotations

import heapq
import os
import select
import signal
import time

from passenger.watchdog.log import Logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

log = Logger("event_loop")


class Timer:
    """A callback due at `when` (time.monotonic()); `cancel()` before then drops it."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._readers: dict[int, Callable[[], None]] = {}
        self._timers: list[tuple[float, int, Timer]] = []  # a heap
        self._timers_made = 0  # orders timers due at the same time
        self._signal_handlers: dict[int, Callable[[int], None]] = {}
        self._wakeup: tuple[int, int] | None = None

    # -- descriptors ----------------------------------------------------------------

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call `callback()` whenever `fd` is readable, until `remove_reader(fd)`."""
        self._epoll.register(fd, select.EPOLLIN)
        self._readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    # -- deadlines ------------------------------------------------------------------

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(time.monotonic() + delay, callback)

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(when, callback)
        self._timers_made += 1
        heapq.heappush(self._timers, (when, self._timers_made, timer))
        return timer

    # -- signals --------------------------------------------------------------------

    def handle_signals(self, handlers: dict[int, Callable[[int], None]]) -> None:
        """From now on, each of these signals calls its handler(signum) from the loop."""
        if self._wakeup is None:
            self._wakeup = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            signal.set_wakeup_fd(self._wakeup[1])
            self.add_reader(self._wakeup[0], self._read_signals)
        self._signal_handlers.update(handlers)
        for signum in handlers:
            signal.signal(signum, _noted_on_wakeup_fd)

    def _read_signals(self) -> None:
        assert self._wakeup is not None
        try:
            received = os.read(self._wakeup[0], 4096)
        except BlockingIOError:
            return
        for signum in received:
            handler = self._signal_handlers.get(signum)
            if handler is not None:
                self._call(handler, signum)

    # -- running --------------------------------------------------------------------

    def run_until(self, done: Callable[[], bool]) -> None:
        """Run callbacks as their descriptors, deadlines and signals come, until done()."""
        while not done():
            self._run_once()

    def _run_once(self) -> None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        timeout = max(0.0, self._timers[0][0] - time.monotonic()) if self._timers else -1
        for fd, _ in self._epoll.poll(timeout):
            callback = self._readers.get(fd)
            if callback is not None:  # an earlier callback may have removed it
                self._call(callback)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            timer = heapq.heappop(self._timers)[2]
            if not timer.cancelled:
                self._call(timer.callback)

    def _call(self, callback: Callable[..., None], *args: int) -> None:
        """A bug in one callback is logged; the watchdog goes on supervising."""
        try:
            callback(*args)
        except Exception:
            import traceback

            log.error(f"Unexpected error (the watchdog goes on):\n{traceback.format_exc()}")

    def close(self) -> None:
        if self._wakeup is not None:
            signal.set_wakeup_fd(-1)
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None
        self._epoll.close()


def _noted_on_wakeup_fd(signum: int, frame: FrameType | None) -> None:
    """Python's C-level handler has already written `signum` to the wakeup fd."""
