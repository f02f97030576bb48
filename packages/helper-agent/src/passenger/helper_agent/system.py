"""The system calls the pool's rules make (signals, clocks, timers), behind one object.

The pool, its groups and their processes take a `System` instead of calling `os.kill`,
`time.time` or the event loop's `call_later` themselves, so their rules (routing, queue
limits, scaling, eviction, restarts) can be unit-tested with a fake clock and no real
process to signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class System:
    """The real thing: the OS and the running event loop."""

    def kill(self, pid: int, sig: int, process_group: bool = False) -> None:
        """Signal a process (or its whole group); one that is gone already, or no longer
        ours to signal, is not an error."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if process_group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    def time(self) -> float:
        """Wall-clock seconds: what status views show (last used, spawned at)."""
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(delay, callback)


REAL_SYSTEM = System()
