"""One supervised agent (helper or logging agent): spawned with the startup protocol (a
document on its stdin, one feedback line back), watched through a pidfd, stopped with
its whole process group. Its stdin stays open as its lifeline: when the watchdog dies,
the agent reads EOF and exits. Its state moves only along the edges of LIFECYCLE, in
`change_state`.

Spawned with os.posix_spawn in a process group of its own (so that stopping it takes
down what it started); the subprocess module would cost the watchdog 2 MB.
"""

from __future__ import annotations

import enum
import fcntl
import os
import signal

from passenger.common.child_watcher import ChildWatcher
from passenger.common.exit_status import describe_exit
from passenger.common.lifecycle import Transitions
from passenger.common.startup_protocol import encode_document, parse_feedback
from passenger.watchdog.log import Logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from passenger.watchdog.event_loop import EventLoop, Timer

log = Logger("agent_process")
PIPE_CAPACITY = 65536  # Linux's default; a larger startup document gets a larger pipe


class AgentState(enum.Enum):
    STOPPED = "stopped"    # no process (never started, or exited and reaped)
    STARTING = "starting"  # spawned, its report not in yet
    RUNNING = "running"    # reported ready
    STOPPING = "stopping"  # being stopped or killed, its exit not seen yet


LIFECYCLE = Transitions("agent", [
    (AgentState.STOPPED, AgentState.STARTING,
     "start(): spawned, its startup document on its stdin"),
    (AgentState.STARTING, AgentState.STOPPED, "start(): its executable could not be run"),
    (AgentState.STARTING, AgentState.RUNNING, "it reported ready"),
    (AgentState.STARTING, AgentState.STOPPING,
     "it reported an error, or exited or missed its deadline before reporting (its "
     "group is killed), or stop()"),
    (AgentState.RUNNING, AgentState.STOPPING,
     "stop(): SIGTERM, SIGKILL to its group after the grace period"),
    (AgentState.RUNNING, AgentState.STOPPED,
     "it exited by itself (on_exit: the supervisor restarts it)"),
    (AgentState.STOPPING, AgentState.STOPPED,
     "it exited (what is left of its group is killed)"),
])


class AgentStartupError(RuntimeError):
    """The agent did not become ready: it reported a fatal error (`reported`: e.g. bad
    configuration, retrying cannot help) or it died or hung before saying anything."""

    def __init__(self, message: str, reported: bool) -> None:
        super().__init__(message)
        self.reported = reported


def spawn(executable: str, stdin_fd: int, pass_fds: tuple[int, ...]) -> int:
    """Run `executable` in a new process group with `stdin_fd` as its stdin and
    `pass_fds` open under their numbers; -> its PID. Every other descriptor of ours is
    close-on-exec (Python opens them so)."""
    for fd in pass_fds:
        os.set_inheritable(fd, True)
    try:
        return os.posix_spawnp(executable, [executable], os.environ,
                               file_actions=[(os.POSIX_SPAWN_DUP2, stdin_fd, 0)],
                               setpgroup=0, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
    finally:
        for fd in pass_fds:
            os.set_inheritable(fd, False)


class AgentProcess:
    """`start()` spawns the agent and returns at once; `on_started(agent, error)` follows
    when it has reported ready (error None) or failed to. `on_exit(agent, returncode)`
    is called when a running agent exits by itself."""

    def __init__(self, loop: EventLoop, name: str, executable: str,
                 document: Callable[[], dict[str, Any]], pass_fds: tuple[int, ...] = (),
                 start_timeout: float = 30.0, children: ChildWatcher | None = None) -> None:
        self.loop = loop
        # the watchdog's one watcher of its children's exits (one per agent in tests)
        self.children = children or ChildWatcher(lambda: loop)
        self.name = name
        self.executable = executable
        self.document = document
        self.pass_fds = pass_fds
        self.start_timeout = start_timeout
        self.state = AgentState.STOPPED
        self.pid = 0
        self.on_started: Callable[[AgentProcess, AgentStartupError | None], None] = \
            lambda agent, error: None
        self.on_exit: Callable[[AgentProcess, int], None] = lambda agent, code: None
        self._lifeline = -1       # our end of the agent's stdin
        self._feedback = -1       # our end of its feedback pipe, while it starts
        self._feedback_data = b""
        self._deadline: Timer | None = None  # to report ready, or to exit when stopped
        self._awaiting_start = False  # someone waits for on_started
        self._failed_start: AgentStartupError | None = None  # told once it has exited

    def change_state(self, new: AgentState) -> None:
        """The one place `state` changes: along an edge of LIFECYCLE, or
        IllegalTransition."""
        LIFECYCLE.check(self.state, new)
        log.debug(f"{self.name}: {self.state.value} -> {new.value}")
        self.state = new

    # -- starting -------------------------------------------------------------------

    def start(self) -> None:
        self.change_state(AgentState.STARTING)
        self._awaiting_start, self._failed_start = True, None
        feedback_r, feedback_w = os.pipe()
        stdin_r, stdin_w = os.pipe()
        try:
            self.pid = spawn(self.executable, stdin_r, (*self.pass_fds, feedback_w))
        except OSError as exc:
            for fd in (feedback_r, stdin_w):
                os.close(fd)
            self.change_state(AgentState.STOPPED)
            self._awaiting_start = False
            self.on_started(self, AgentStartupError(f"cannot run {self.executable}: {exc}",
                                                    reported=True))
            return
        finally:
            os.close(stdin_r)
            os.close(feedback_w)
        self.children.watch(self.pid, self._on_exit)
        self._lifeline = stdin_w
        self._send_document(encode_document({**self.document(), "feedback_fd": feedback_w}))
        os.set_blocking(feedback_r, False)
        self._feedback, self._feedback_data = feedback_r, b""
        self.loop.add_reader(feedback_r, self._on_feedback)
        self._deadline = self.loop.call_later(self.start_timeout, self._on_start_timeout)

    def _send_document(self, data: bytes) -> None:
        """Into the pipe whole, so that we never wait on the agent to read it."""
        if len(data) > PIPE_CAPACITY:
            try:
                fcntl.fcntl(self._lifeline, fcntl.F_SETPIPE_SZ, len(data))
            except OSError:
                pass  # then the agent reads the rest while we write it
        try:
            while data:
                data = data[os.write(self._lifeline, data):]
        except BrokenPipeError:
            pass  # it died at once: its exit says so
        os.set_blocking(self._lifeline, False)  # for notes: never block on them

    def _on_feedback(self) -> None:
        try:
            chunk = os.read(self._feedback, 65536)
        except BlockingIOError:
            return
        self._feedback_data += chunk
        if self.state is not AgentState.STARTING:  # stopped while starting: no one asks
            if not chunk:
                self._close_feedback()
        elif not chunk or b"\n" in chunk:
            self._conclude_start()

    def _on_start_timeout(self) -> None:
        self._deadline = None
        self._conclude_start(timed_out=True)

    def _conclude_start(self, timed_out: bool = False) -> None:
        """Ready, or a failed start: then the agent's group is killed, and `on_started`
        hears of it once the agent has exited (so its exit status can be told)."""
        line = self._feedback_data.split(b"\n", 1)[0]
        self._cancel_deadline()
        self._close_feedback()
        message = parse_feedback(line)
        if message["status"] == "ready" and not timed_out:
            self.change_state(AgentState.RUNNING)
            log.debug(f"{self.name} online, PID {self.pid}")
            self._awaiting_start = False
            self.on_started(self, None)
            return
        if line.strip():
            self._failed_start = AgentStartupError(f"{self.name}: {message.get('message')}",
                                                   reported=True)
        elif timed_out:
            self._failed_start = AgentStartupError(
                f"{self.name} did not report readiness within {self.start_timeout:g} s",
                reported=False)
        self.change_state(AgentState.STOPPING)
        self.kill_group()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _close_feedback(self) -> None:
        if self._feedback >= 0:
            self.loop.remove_reader(self._feedback)
            os.close(self._feedback)
            self._feedback = -1

    # -- running and exiting --------------------------------------------------------

    def tell(self, note: dict[str, object]) -> bool:
        """Send a note on the agent's stdin after its startup document (see
        startup_protocol); False if it is not running, or not reading just now."""
        if self.state is not AgentState.RUNNING or self._lifeline < 0:
            return False
        try:
            os.write(self._lifeline, encode_document(note))  # short: all or nothing
        except OSError:
            return False
        return True

    def _on_exit(self, exit_code: int | None) -> None:
        """The agent has exited (and been reaped: it is our own child, so its code is
        known)."""
        code = exit_code if exit_code is not None else 1
        os.close(self._lifeline)
        self._lifeline = -1
        if self.state is AgentState.STARTING:
            self._read_what_feedback_came()
            self._conclude_start()
        if self.state is AgentState.RUNNING:
            self.change_state(AgentState.STOPPED)
            self.on_exit(self, code)
            return
        self._cancel_deadline()  # the stop's
        self._close_feedback()
        self.kill_group()  # whatever it started and left behind
        self.change_state(AgentState.STOPPED)
        if self._awaiting_start:  # a failed start, told now that its exit is known
            self._awaiting_start = False
            failed, self._failed_start = self._failed_start, None
            self.on_started(self, failed or AgentStartupError(
                f"{self.name} exited with {describe_exit(code)} while starting",
                reported=False))

    def _read_what_feedback_came(self) -> None:
        while self._feedback >= 0:
            try:
                chunk = os.read(self._feedback, 65536)
            except BlockingIOError:
                return
            self._feedback_data += chunk
            if not chunk:
                return

    # -- stopping -------------------------------------------------------------------

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Signal the agent and everything it started (its process group)."""
        if self.pid:
            try:
                os.killpg(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, grace: float) -> None:
        """SIGTERM now, SIGKILL to the whole group if it has not exited within `grace`
        seconds; the loop sees it exit (state STOPPED)."""
        if self.state is AgentState.STOPPED:
            self.kill_group()
            return
        if self.state is AgentState.STOPPING:
            return
        if self.state is AgentState.STARTING:  # abandoned: nobody waits for its outcome
            self._awaiting_start = False
            self._cancel_deadline()  # (the pipe stays open: its report must not fail)
        self.change_state(AgentState.STOPPING)
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self._deadline = self.loop.call_later(grace, lambda: self._kill_after(grace))

    def _kill_after(self, grace: float) -> None:
        self._deadline = None
        log.warning(f"{self.name} (PID {self.pid}) did not stop within {grace:.0f} s; "
                    f"killing it")
        self.kill_group()
