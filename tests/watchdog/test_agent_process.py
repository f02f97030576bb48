"""One supervised agent and the supervisor, with small fake agents (real processes that
speak the startup protocol): how a start succeeds or fails, notes on the lifeline, stops
with a grace period, restarts after a crash, and that every state change takes an edge
of the agent's lifecycle table. Every process is reaped, every wait bounded."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from passenger.common.lifecycle import IllegalTransition
from passenger.watchdog.agent_process import (
    LIFECYCLE,
    AgentProcess,
    AgentStartupError,
    AgentState,
)
from passenger.watchdog.event_loop import EventLoop
from passenger.watchdog.supervisor import Supervisor

FAKE_AGENT = f"""#!{sys.executable}
import json, os, signal, sys, time
doc = json.loads(sys.stdin.buffer.readline())
feedback = doc["feedback_fd"]
mode = doc["mode"]
if mode == "exit3":
    sys.exit(3)
if mode == "hang":
    time.sleep(60)
if mode == "error":
    os.write(feedback, b'{{"status": "error", "message": "bad configuration"}}\\n')
    sys.exit(1)
if mode in ("deaf", "slow and deaf"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "slow and deaf":
    open(doc["notes"], "w").write("starting\\n")
    time.sleep(0.3)
try:
    os.write(feedback, b'{{"status": "ready"}}\\n')
except BrokenPipeError:
    open(doc["notes"], "w").write("could not report")
os.close(feedback)
with open(doc["notes"], "ab") as notes:
    for line in sys.stdin.buffer:  # until the lifeline closes
        notes.write(line)
        notes.flush()
"""


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    loop = EventLoop()
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture
def make_agent(loop: EventLoop, tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    script = tmp_path / "fake-agent"
    script.write_text(FAKE_AGENT)
    script.chmod(0o755)
    agents: list[AgentProcess] = []

    def make(mode: str, name: str = "FakeAgent", **kwargs: float) -> AgentProcess:
        agent = AgentProcess(loop, name, str(script), lambda: {
            "mode": mode, "notes": str(tmp_path / f"{name}.notes")}, **kwargs)
        agents.append(agent)
        return agent

    try:
        yield make
    finally:
        for agent in agents:  # reap whatever a failed test left running
            if agent.state is not AgentState.STOPPED:
                agent.kill_group()
                run_until(loop, lambda agent=agent: agent.state is AgentState.STOPPED, 5)


def run_until(loop: EventLoop, done: Callable[[], bool], timeout: float) -> None:
    """Run the loop until done(), looked at every 10 ms too (done() may watch a file)."""
    deadline = time.monotonic() + timeout
    ticks = []

    def tick() -> None:
        ticks.append(loop.call_later(0.01, tick))

    tick()
    loop.run_until(lambda: done() or time.monotonic() >= deadline)
    ticks[-1].cancel()
    assert done(), f"not done within {timeout} s"


def start(loop: EventLoop, agent: AgentProcess) -> AgentStartupError | None:
    outcome: list[AgentStartupError | None] = []
    agent.on_started = lambda _, error: outcome.append(error)
    agent.start()
    run_until(loop, lambda: bool(outcome), 10)
    return outcome[0]


def test_a_ready_agent_runs_hears_notes_and_stops_on_sigterm(
        loop: EventLoop, make_agent: Callable[..., AgentProcess], tmp_path: Path) -> None:
    agent = make_agent("ready")
    assert start(loop, agent) is None
    assert agent.state is AgentState.RUNNING and os.getpgid(agent.pid) == agent.pid
    assert agent.tell({"watchdog_log_lines_dropped": 7})
    notes = tmp_path / "FakeAgent.notes"
    run_until(loop, lambda: notes.exists() and notes.read_bytes().endswith(b"\n"), 5)
    assert notes.read_bytes() == b'{"watchdog_log_lines_dropped":7}\n'
    pid = agent.pid
    started = time.monotonic()
    agent.stop(grace=10)
    run_until(loop, lambda: agent.state is AgentState.STOPPED, 5)
    assert time.monotonic() - started < 2  # SIGTERM did it, not the grace period
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped already
    assert not agent.tell({"late": True})


def test_a_reported_error_is_the_message_the_user_sees(
        loop: EventLoop, make_agent: Callable[..., AgentProcess]) -> None:
    agent = make_agent("error")
    error = start(loop, agent)
    assert error is not None and error.reported
    assert str(error) == "FakeAgent: bad configuration"
    assert agent.state is AgentState.STOPPED


def test_an_agent_that_dies_silently_is_told_with_its_exit_status(
        loop: EventLoop, make_agent: Callable[..., AgentProcess]) -> None:
    error = start(loop, make_agent("exit3"))
    assert error is not None and not error.reported
    assert str(error) == "FakeAgent exited with exit status 3 while starting"


def test_an_agent_that_never_answers_is_killed_at_the_deadline(
        loop: EventLoop, make_agent: Callable[..., AgentProcess]) -> None:
    agent = make_agent("hang", start_timeout=0.5)
    started = time.monotonic()
    error = start(loop, agent)
    assert error is not None and not error.reported
    assert str(error) == "FakeAgent did not report readiness within 0.5 s"
    assert 0.5 <= time.monotonic() - started < 3
    assert agent.state is AgentState.STOPPED


def test_a_missing_executable_is_a_reported_error(loop: EventLoop) -> None:
    agent = AgentProcess(loop, "Nothing", "/nonexistent/agent", lambda: {})
    error = start(loop, agent)
    assert error is not None and error.reported
    assert str(error).startswith("cannot run /nonexistent/agent: ")
    assert agent.state is AgentState.STOPPED


def test_an_agent_ignoring_sigterm_is_killed_after_the_grace_period(
        loop: EventLoop, make_agent: Callable[..., AgentProcess]) -> None:
    agent = make_agent("deaf")
    assert start(loop, agent) is None
    started = time.monotonic()
    agent.stop(grace=0.4)
    run_until(loop, lambda: agent.state is AgentState.STOPPED, 5)
    assert 0.4 <= time.monotonic() - started < 3


def test_supervisor_starts_all_at_once_and_restarts_a_crashed_agent(
        loop: EventLoop, make_agent: Callable[..., AgentProcess]) -> None:
    first, second = make_agent("ready", "First"), make_agent("ready", "Second")
    supervisor = Supervisor(loop, [first, second])
    supervisor.start_all()
    assert first.state is AgentState.STARTING and second.state is AgentState.STARTING
    run_until(loop, lambda: supervisor.started, 10)
    assert supervisor.startup_error() is None
    old = second.pid
    os.kill(old, signal.SIGKILL)
    run_until(loop, lambda: second.state is AgentState.RUNNING and second.pid != old, 10)
    supervisor.stop_all({})
    assert first.state is AgentState.STOPPED and second.state is AgentState.STOPPED


def test_supervisor_reports_the_first_failure_in_start_order(
        loop: EventLoop, make_agent: Callable[..., AgentProcess]) -> None:
    agents = [make_agent("ready", "Logging"), make_agent("exit3", "Helper"),
              make_agent("error", "Third")]
    supervisor = Supervisor(loop, agents)
    supervisor.start_all()
    run_until(loop, lambda: supervisor.started, 10)
    assert str(supervisor.startup_error()) == "Helper exited with exit status 3 while starting"
    supervisor.stop_all({})
    assert all(agent.state is AgentState.STOPPED for agent in agents)


def test_an_agent_stopped_while_starting_can_still_report_and_is_not_waited_for(
        loop: EventLoop, make_agent: Callable[..., AgentProcess], tmp_path: Path) -> None:
    agent = make_agent("slow and deaf")
    outcome: list[AgentStartupError | None] = []
    agent.on_started = lambda _, error: outcome.append(error)
    agent.start()
    notes = tmp_path / "FakeAgent.notes"
    run_until(loop, notes.exists, 10)  # it ignores SIGTERM from now on
    agent.stop(grace=1.0)  # so it is killed after the grace period
    run_until(loop, lambda: agent.state is AgentState.STOPPED, 5)
    assert outcome == []  # the start was abandoned: nobody is told its outcome
    assert notes.read_text() == "starting\n"  # and its report went through


class RecordedAgent(AgentProcess):
    """Records every assignment of `state` and every change_state call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.assigned: list[AgentState] = []
        self.changes: list[tuple[AgentState, AgentState]] = []
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def state(self) -> AgentState:
        return self._state

    @state.setter
    def state(self, value: AgentState) -> None:
        self.assigned.append(value)
        self._state = value

    def change_state(self, new: AgentState) -> None:
        self.changes.append((self.state, new))
        super().change_state(new)


def test_a_change_the_lifecycle_has_no_edge_for_raises(loop: EventLoop) -> None:
    agent = AgentProcess(loop, "Nothing", "/nonexistent/agent", lambda: {})
    with pytest.raises(IllegalTransition, match="no edge STOPPED -> RUNNING"):
        agent.change_state(AgentState.RUNNING)
    assert agent.state is AgentState.STOPPED


@pytest.mark.parametrize(("mode", "kill"), [("ready", True), ("exit3", False),
                                            ("error", False)])
def test_every_state_change_of_an_agent_takes_an_edge_of_the_table(
        loop: EventLoop, tmp_path: Path, mode: str, kill: bool) -> None:
    """A killed running agent, one dying while it starts, one reporting an error: each
    ends STOPPED, and `state` only ever changed in change_state, along an edge."""
    script = tmp_path / "fake-agent"
    script.write_text(FAKE_AGENT)
    script.chmod(0o755)
    agent = RecordedAgent(loop, "FakeAgent", str(script),
                          lambda: {"mode": mode, "notes": str(tmp_path / "notes")})
    try:
        start(loop, agent)
        if kill:
            assert agent.state is AgentState.RUNNING
            os.kill(agent.pid, signal.SIGKILL)
        run_until(loop, lambda: agent.state is AgentState.STOPPED, 10)
    finally:
        if agent.state is not AgentState.STOPPED:
            agent.kill_group()
            run_until(loop, lambda: agent.state is AgentState.STOPPED, 5)
    assert agent.assigned == [AgentState.STOPPED] + [new for _, new in agent.changes]
    assert all(LIFECYCLE.allows(old, new) for old, new in agent.changes)
    assert agent.changes[-1][1] is AgentState.STOPPED
    if kill:  # its exit, seen by the loop, went through change_state too
        assert agent.changes[-1] == (AgentState.RUNNING, AgentState.STOPPED)
    with pytest.raises(ChildProcessError):
        os.waitpid(agent.pid, os.WNOHANG)  # reaped


def test_the_lifecycle_table_says_what_takes_each_edge() -> None:
    lines = LIFECYCLE.describe()
    assert len(lines) == 7 and all(line.split(": ", 1)[1] for line in lines)
    assert not LIFECYCLE.allows(AgentState.STOPPED, AgentState.RUNNING)
