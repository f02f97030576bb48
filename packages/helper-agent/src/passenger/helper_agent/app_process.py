"""One application process as the pool sees it, and its lifecycle."""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Protocol

from passenger.common.lifecycle import Transitions
from passenger.helper_agent.system import REAL_SYSTEM, System, Timer

if TYPE_CHECKING:
    from passenger.helper_agent.app_channel import Channel


log = logging.getLogger(__name__)


class ProcessState(enum.Enum):
    SPAWNING = "spawning"
    ENABLED = "enabled"            # gets requests
    SHUTTING_DOWN = "shutting_down"  # gets no new requests; finishes, then exits
    DEAD = "dead"


SPAWNING, ENABLED = ProcessState.SPAWNING, ProcessState.ENABLED
SHUTTING_DOWN, DEAD = ProcessState.SHUTTING_DOWN, ProcessState.DEAD
PROCESS_LIFECYCLE = Transitions("app process", [
    (SPAWNING, ENABLED, "reported ready and its connections are open"),
    (SPAWNING, DEAD, "exited, or was killed, before it was ready"),
    (ENABLED, SHUTTING_DOWN, "shut down: idle, detached, replaced, restarting, "
                             "broken connection, --max-request-time, stopping"),
    (ENABLED, DEAD, "exited unasked (a crash)"),
    (SHUTTING_DOWN, DEAD, "exited"),
])


class Retirement(enum.Enum):
    """Why a process is being replaced: it serves on until its successor is ready. The
    value is the reason's name in the metrics (`passenger_processes_replaced_total`)."""

    MAX_REQUESTS = "max_requests"
    MEMORY_LIMIT = "memory_limit"
    ROLLING_RESTART = "rolling_restart"


class ChildProcess(Protocol):
    """What we need of a process we started: `subprocess.Popen`, or `AdoptedProcess`."""

    pid: int
    stdin: IO[bytes] | None
    returncode: int | None

    def poll(self) -> int | None: ...


class AdoptedProcess:
    """A worker forked by a preloader and adopted by us (we are a child subreaper): we
    hold its lifeline and wait for it like for a child of our own."""

    def __init__(self, pid: int, lifeline: IO[bytes]) -> None:
        self.pid = pid
        self.stdin: IO[bytes] | None = lifeline
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # not adopted (yet): its status is not ours to see
                return None
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


@dataclass(eq=False)
class AppProcess:
    popen: ChildProcess
    socket_path: str
    concurrency: int = 1
    state: ProcessState = ProcessState.SPAWNING
    sessions: int = 0             # requests on it now: len(busy), kept for speed
    busy: set[Channel] = field(default_factory=set)  # its channels with a request
    processed: int = 0
    spawn_started: float = field(default_factory=time.time)
    spawn_ended: float = 0.0
    last_used: float = 0.0
    channels: list[Channel] = field(default_factory=list)  # one per concurrent request
    own_process_group: bool = False  # a generic app: signals go to its whole group
    exit_description: str = ""
    request_limit: int = 0        # --max-requests plus this process's jitter; 0: none
    # Why a replacement was asked for (and, for the log and status, in words), while the
    # successor is spawning.
    retiring: Retirement | None = None
    retiring_why: str = ""
    kill_timer: Timer | None = None
    broke: bool = False           # its connection broke unasked: an exit then is a crash
    system: System = REAL_SYSTEM

    @property
    def pid(self) -> int:
        return self.popen.pid

    def change_state(self, new: ProcessState) -> None:
        PROCESS_LIFECYCLE.check(self.state, new)
        log.debug("App process %d: %s -> %s", self.pid, self.state.value, new.value)
        self.state = new

    @property
    def accepts_requests(self) -> bool:
        return self.state is ENABLED and self.sessions < self.concurrency

    def free_channel(self) -> Channel | None:
        return next((c for c in self.channels if c.available), None)

    @property
    def idle(self) -> bool:
        return self.state is ENABLED and self.sessions == 0 and self.retiring is None

    def stop_gracefully(self) -> None:
        """Close its lifeline: the loader exits once its current request is done."""
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()

    def open_session(self, channel: Channel) -> None:
        self.busy.add(channel)
        self.sessions += 1

    def close_session(self, channel: Channel) -> bool:
        """-> whether the session was open: a session ends once, however many paths
        (the response's end, an error answer, the connection's loss) report it."""
        if channel not in self.busy:
            return False
        self.busy.discard(channel)
        self.sessions -= 1
        return True

    def retire(self, why: Retirement, in_words: str) -> None:
        self.retiring, self.retiring_why = why, in_words

    def keep(self) -> None:
        """Its replacement failed: it serves on."""
        self.retiring, self.retiring_why = None, ""

    def terminate(self, kill_after: float) -> None:
        """Lifeline closed and SIGTERM now; SIGKILL if it is still there `kill_after` s
        later."""
        self.stop_gracefully()
        self.kill(signal.SIGTERM)
        self.kill_after(kill_after)

    def kill_after(self, delay: float) -> None:
        if self.kill_timer is not None:
            self.kill_timer.cancel()
        self.kill_timer = self.system.call_later(delay, self._kill_overdue)

    def _kill_overdue(self) -> None:
        if self.state is not DEAD:
            log.warning("App process %d did not stop in time; killing it", self.pid)
            self.kill()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.returncode is None:
            self.system.kill(self.pid, sig, process_group=self.own_process_group)
