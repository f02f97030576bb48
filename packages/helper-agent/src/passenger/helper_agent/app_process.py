"""One application process as the pool sees it, and its lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from passenger.helper_agent.app_channel import Channel


log = logging.getLogger(__name__)


class ProcessState(enum.Enum):
    SPAWNING = "spawning"
    ENABLED = "enabled"            # gets requests
    SHUTTING_DOWN = "shutting_down"  # gets no new requests; finishes, then exits
    DEAD = "dead"


TRANSITIONS: dict[ProcessState, frozenset[ProcessState]] = {
    ProcessState.SPAWNING: frozenset({ProcessState.ENABLED, ProcessState.DEAD}),
    ProcessState.ENABLED: frozenset({ProcessState.SHUTTING_DOWN, ProcessState.DEAD}),
    ProcessState.SHUTTING_DOWN: frozenset({ProcessState.DEAD}),
    ProcessState.DEAD: frozenset(),
}


class InvalidTransition(RuntimeError):
    pass


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
    sessions: int = 0
    processed: int = 0
    spawn_started: float = field(default_factory=time.time)
    spawn_ended: float = 0.0
    last_used: float = 0.0
    channels: list[Channel] = field(default_factory=list)  # one per concurrent request
    own_process_group: bool = False  # a generic app: signals go to its whole group
    exit_description: str = ""
    request_limit: int = 0        # --max-requests plus this process's jitter; 0: none
    retiring: str = ""            # why a replacement was asked for, while it is spawning
    kill_timer: asyncio.TimerHandle | None = None
    broke: bool = False           # its connection broke unasked: an exit then is a crash

    @property
    def pid(self) -> int:
        return self.popen.pid

    def change_state(self, new: ProcessState) -> None:
        if new not in TRANSITIONS[self.state]:
            raise InvalidTransition(f"process {self.pid}: {self.state.value} -> {new.value}")
        log.debug("App process %d: %s -> %s", self.pid, self.state.value, new.value)
        self.state = new

    @property
    def accepts_requests(self) -> bool:
        return self.state is ProcessState.ENABLED and self.sessions < self.concurrency

    def free_channel(self) -> Channel | None:
        return next((c for c in self.channels if c.sink is None and c.available), None)

    @property
    def idle(self) -> bool:
        return self.state is ProcessState.ENABLED and self.sessions == 0 and not self.retiring

    def stop_gracefully(self) -> None:
        """Close its lifeline: the loader exits once its current request is done."""
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if self.own_process_group:
                    os.killpg(self.pid, sig)
                else:
                    os.kill(self.pid, sig)
