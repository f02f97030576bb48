"""The one place a process learns that one of its children exited.

Each child (an agent of the watchdog; an app process, a preloader or an adopted worker
of the helper agent, which is a child subreaper) is watched through a pidfd: it becomes
readable the moment the child exits, and the watcher reaps it and calls back with its
exit code. Orphans that are nobody's (an app's own daemonized child, reparented to the
helper agent) are reaped by `reap_orphans`, which leaves the watched ones to the watcher.

It works with any event loop that has `add_reader(fd, callback)` and
`remove_reader(fd)`: asyncio's (the helper agent) and the watchdog's own. It imports
nothing beyond `os`, for the watchdog's sake.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol

    class ReaderLoop(Protocol):
        def add_reader(self, fd: int, callback: Callable[[], None]) -> Any: ...
        def remove_reader(self, fd: int) -> Any: ...


class ChildWatcher:
    def __init__(self, get_loop: Callable[[], ReaderLoop]) -> None:
        self._get_loop = get_loop
        self._watched: set[int] = set()  # PIDs whose exit a pidfd will tell

    def watch(self, pid: int, on_exit: Callable[[int | None], None]) -> None:
        """Reap `pid` once it has exited (it may have already) and call
        `on_exit(exit code)`; the code is None if the process was not ours to reap
        (a worker not yet reparented to us)."""
        loop = self._get_loop()
        pidfd = os.pidfd_open(pid)
        self._watched.add(pid)

        def exited() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            self._watched.discard(pid)
            on_exit(reap(pid))

        loop.add_reader(pidfd, exited)

    def reap_orphans(self) -> None:
        """Wait for exited children nobody watches, without touching the watched ones."""
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid in self._watched:
                return
            reap(info.si_pid)


def reap(pid: int) -> int | None:
    """The exit code of a child that has exited (so this never blocks), or None if it
    is not our child."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status)
