"""Keeps the agents running: starts them all at once, restarts one that dies (backing off
when it crash-loops, also when a restart itself fails), and stops them in reverse order.
Only a failure while the server starts stops the server."""

from __future__ import annotations

import collections
import time

from passenger.common.exit_status import describe_exit
from passenger.watchdog.agent_process import AgentProcess, AgentStartupError, AgentState
from passenger.watchdog.log import Logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from passenger.watchdog.event_loop import EventLoop, Timer

log = Logger("supervisor")


class RestartPolicy:
    """Restart at once; after `burst` failures within `window` seconds, back off
    exponentially up to `cap` seconds."""

    def __init__(self, burst: int = 5, window: float = 60.0, cap: float = 60.0) -> None:
        self.burst = burst
        self.window = window
        self.cap = cap
        self.failures: collections.deque[float] = collections.deque()

    def next_delay(self, now: float) -> float:
        self.failures.append(now)
        while self.failures and now - self.failures[0] > self.window:
            self.failures.popleft()
        excess = len(self.failures) - self.burst
        return 0.0 if excess <= 0 else min(self.cap, 0.5 * 2 ** (excess - 1))


class Supervisor:
    def __init__(self, loop: EventLoop, agents: list[AgentProcess]) -> None:
        self.loop = loop
        self.agents = agents  # in start order; stopped in reverse
        self.policies = {agent.name: RestartPolicy() for agent in agents}
        self.stopping = False
        self.first_starts: dict[str, AgentStartupError | None] = {}  # outcome by name
        self._restarts: dict[str, Timer] = {}
        for agent in agents:
            agent.on_started = self._on_started
            agent.on_exit = self._on_exit

    def start_all(self) -> None:
        """Start every agent at once: none needs another to be ready first (the
        logging pipes exist before any agent starts, and hold what is written to them
        until the logging agent reads). `started` tells when all have answered."""
        for agent in self.agents:
            agent.start()

    @property
    def started(self) -> bool:
        return len(self.first_starts) == len(self.agents)

    def startup_error(self) -> AgentStartupError | None:
        """The first agent's failure to start, in start order."""
        for agent in self.agents:
            error = self.first_starts.get(agent.name)
            if error is not None:
                return error
        return None

    def _on_started(self, agent: AgentProcess, error: AgentStartupError | None) -> None:
        if agent.name not in self.first_starts:
            self.first_starts[agent.name] = error
        elif self.stopping:
            return
        elif error is not None:
            # It ran before, so its configuration is good: whatever it reports now (a
            # stale socket it cannot remove, a full disk) may pass. Back off and retry;
            # only a failure at the server's start stops the server.
            self._schedule_restart(agent, f"{agent.name} failed to restart: {error}")
        else:
            log.info(f"{agent.name} restarted, PID {agent.pid}")

    def _on_exit(self, agent: AgentProcess, code: int) -> None:
        agent.kill_group()  # take down whatever it started (a helper agent's apps)
        self._schedule_restart(agent, f"{agent.name} (PID {agent.pid}) exited with "
                                      f"{describe_exit(code)}")

    def _schedule_restart(self, agent: AgentProcess, what: str) -> None:
        if self.stopping:
            return
        delay = self.policies[agent.name].next_delay(time.monotonic())
        log.warning(f"{what}; restarting it"
                    + (f" in {delay:.1f} s (crash loop: backing off)" if delay else ""))
        self._restarts[agent.name] = self.loop.call_later(delay, lambda: self._restart(agent))

    def _restart(self, agent: AgentProcess) -> None:
        self._restarts.pop(agent.name, None)
        if not self.stopping and agent.state is AgentState.STOPPED:
            agent.start()

    def stop_all(self, timeouts: dict[str, float]) -> None:
        """Stop the agents one after the other in reverse start order (the logging agent
        last, so that it writes what the others said); returns once all have exited."""
        self._stop_restarting()
        for agent in reversed(self.agents):
            agent.stop(timeouts.get(agent.name, 5.0))
            self._wait_until_stopped(agent)

    def _wait_until_stopped(self, agent: AgentProcess) -> None:
        self.loop.run_until(lambda: agent.state is AgentState.STOPPED)

    def kill_all(self) -> None:
        self._stop_restarting()
        for agent in self.agents:
            agent.kill_group()

    def _stop_restarting(self) -> None:
        self.stopping = True
        for timer in self._restarts.values():
            timer.cancel()
        self._restarts.clear()
