"""The one place the helper agent learns that a child process exited.

Every process it starts or adopts (app processes, preloaders, and the workers a
preloader forks, which become ours because we are a child subreaper) is watched through
a pidfd: it becomes readable the moment the process exits, and the watcher reaps it and
calls back. Orphans that are nobody's (an app's own daemonized child, reparented to us)
are reaped by `reap_orphans`, which leaves the watched ones to the watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Protocol


class Child(Protocol):
    """A process we can reap: `subprocess.Popen`, or an adopted worker."""

    pid: int

    def poll(self) -> int | None: ...


class ChildWatcher:
    def __init__(self) -> None:
        self._watched: set[int] = set()  # PIDs whose exit a pidfd will tell

    def watch(self, child: Child, on_exit: Callable[[], None]) -> None:
        """Reap `child` and call `on_exit()` once it has exited (it may have already)."""
        loop = asyncio.get_running_loop()
        pid = child.pid
        pidfd = os.pidfd_open(pid)
        self._watched.add(pid)

        def exited() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            child.poll()
            self._watched.discard(pid)
            on_exit()

        loop.add_reader(pidfd, exited)

    def watching(self, pid: int) -> bool:
        return pid in self._watched

    def reap_orphans(self) -> None:
        """Wait for exited children nobody watches, without touching the watched ones."""
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid in self._watched:
                return
            with contextlib.suppress(ChildProcessError):
                os.waitpid(info.si_pid, 0)
