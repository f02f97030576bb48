"""Keeps the agents running: starts them in order, restarts one that dies (backing off when
it crash-loops), and stops them in reverse order."""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
import time
from collections.abc import Callable

from passenger.watchdog.agent_process import AgentProcess, AgentStartupError

log = logging.getLogger(__name__)


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


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


class Supervisor:
    def __init__(self, agents: list[AgentProcess], on_fatal: Callable[[str], None]) -> None:
        self.agents = agents  # in start order
        self.policies = {agent.name: RestartPolicy() for agent in agents}
        self.stopping = False
        self.on_fatal = on_fatal
        for agent in agents:
            agent.on_exit = self._on_exit

    async def start_all(self) -> None:
        for agent in self.agents:
            await agent.start()

    def _on_exit(self, agent: AgentProcess, code: int) -> None:
        # Take down whatever the agent started (a helper agent's app processes).
        agent.kill_group()
        if self.stopping:
            return
        delay = self.policies[agent.name].next_delay(time.monotonic())
        log.warning("%s (PID %d) exited with %s; restarting it%s", agent.name, agent.pid,
                    describe_exit(code), f" in {delay:.1f} s" if delay else "")
        asyncio.get_running_loop().create_task(self._restart(agent, delay))

    async def _restart(self, agent: AgentProcess, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        if self.stopping:
            return
        try:
            await agent.start()
        except AgentStartupError as exc:
            self.on_fatal(str(exc))

    async def stop_all(self, timeouts: dict[str, float]) -> None:
        self.stopping = True
        for agent in reversed(self.agents):
            await agent.stop(timeouts.get(agent.name, 5.0))

    def kill_all(self) -> None:
        self.stopping = True
        for agent in self.agents:
            agent.kill_group()
