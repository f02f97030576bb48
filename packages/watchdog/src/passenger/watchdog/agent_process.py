"""One supervised agent (helper or logging): start with the startup protocol, watch its exit
via pidfd, stop it with its whole process group."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import subprocess
from collections.abc import Callable
from typing import Any

from passenger.common.exit_status import describe_exit
from passenger.common.startup_protocol import encode_document, parse_feedback, read_feedback_line

log = logging.getLogger(__name__)


class AgentState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


TRANSITIONS: dict[AgentState, frozenset[AgentState]] = {
    AgentState.STOPPED: frozenset({AgentState.STARTING}),
    AgentState.STARTING: frozenset({AgentState.RUNNING, AgentState.STOPPED,
                                    AgentState.STOPPING}),
    AgentState.RUNNING: frozenset({AgentState.STOPPING, AgentState.STOPPED}),
    AgentState.STOPPING: frozenset({AgentState.STOPPED}),
}


class AgentStartupError(RuntimeError):
    """The agent did not become ready: it reported a fatal error (`reported`: e.g. bad
    configuration, retrying cannot help) or it died or hung before saying anything."""

    def __init__(self, message: str, reported: bool) -> None:
        super().__init__(message)
        self.reported = reported


class AgentProcess:
    def __init__(self, name: str, executable: str, document: Callable[[], dict[str, Any]],
                 pass_fds: tuple[int, ...] = (), start_timeout: float = 30.0) -> None:
        self.name = name
        self.executable = executable
        self.document = document
        self.pass_fds = pass_fds
        self.start_timeout = start_timeout
        self.state = AgentState.STOPPED
        self.popen: subprocess.Popen[bytes] | None = None
        self.on_exit: Callable[[AgentProcess, int], None] = lambda agent, code: None
        self._exited: asyncio.Event | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen else 0

    def change_state(self, new: AgentState) -> None:
        if new not in TRANSITIONS[self.state]:
            raise RuntimeError(f"{self.name}: {self.state.value} -> {new.value}")
        log.debug("%s: %s -> %s", self.name, self.state.value, new.value)
        self.state = new

    async def start(self) -> None:
        self.change_state(AgentState.STARTING)
        feedback_r, feedback_w = os.pipe()
        try:
            self.popen = subprocess.Popen(  # noqa: ASYNC220 (fork+exec is quick)
                [self.executable], stdin=subprocess.PIPE,
                pass_fds=(*self.pass_fds, feedback_w), process_group=0)
        except OSError as exc:
            os.close(feedback_r)
            self.change_state(AgentState.STOPPED)
            raise AgentStartupError(f"cannot run {self.executable}: {exc}",
                                    reported=True) from None
        finally:
            os.close(feedback_w)
        self._watch_exit()
        assert self.popen.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it died at once: the feedback says so
            self.popen.stdin.write(encode_document({**self.document(),
                                                    "feedback_fd": feedback_w}))
            self.popen.stdin.flush()
        try:
            line = await asyncio.wait_for(read_feedback_line(feedback_r), self.start_timeout)
        except TimeoutError:
            line = b""
        message = parse_feedback(line)
        if message["status"] != "ready":
            self.change_state(AgentState.STOPPED)
            self.kill_group()
            if self._exited is not None:
                await self._exited.wait()
            code = self.popen.returncode
            if line.strip():
                raise AgentStartupError(f"{self.name}: {message.get('message')}",
                                        reported=True)
            how = ("did not report readiness in time" if code is None
                   else f"exited with {describe_exit(code)} while starting")
            raise AgentStartupError(f"{self.name} {how}", reported=False)
        if self.state is AgentState.STARTING:
            self.change_state(AgentState.RUNNING)
        log.debug("%s online, PID %d", self.name, self.pid)

    def tell(self, note: dict[str, object]) -> bool:
        """Send a note on the agent's stdin after its startup document (see
        startup_protocol); False if the agent is not running to read it."""
        if self.state is not AgentState.RUNNING or not self.popen or not self.popen.stdin:
            return False
        try:
            self.popen.stdin.write(encode_document(note))
            self.popen.stdin.flush()
        except (OSError, ValueError):
            return False
        return True

    def _watch_exit(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.popen is not None
        popen = self.popen
        pidfd = os.pidfd_open(popen.pid)
        self._exited = exited = asyncio.Event()

        def on_readable() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            code = popen.poll()
            if popen.stdin is not None:
                with contextlib.suppress(OSError):
                    popen.stdin.close()
            exited.set()
            if self.popen is popen:
                was = self.state
                if was is not AgentState.STARTING:  # start() handles a death while starting
                    self.state = AgentState.STOPPED
                if was is AgentState.RUNNING:
                    self.on_exit(self, code if code is not None else 0)

        loop.add_reader(pidfd, on_readable)

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Signal the agent and everything it started (its process group)."""
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)

    async def stop(self, grace: float) -> None:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL the whole group."""
        if self.popen is None or self._exited is None or self.state is AgentState.STOPPED:
            self.kill_group()
            return
        if self.state is not AgentState.STOPPING:
            self.change_state(AgentState.STOPPING)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.popen.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self._exited.wait(), grace)
        except TimeoutError:
            log.warning("%s (PID %d) did not stop within %.0f s; killing it", self.name,
                        self.pid, grace)
        self.kill_group()
        await self._exited.wait()
