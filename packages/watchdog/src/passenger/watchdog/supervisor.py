"""Keeps the agents running: starts them in order, restarts one that dies (backing off when
it crash-loops, also when a restart itself fails), and stops them in reverse order. Only
a failure while the server starts stops the server."""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from passenger.common.exit_status import describe_exit
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


class Supervisor:
    def __init__(self, agents: list[AgentProcess]) -> None:
        self.agents = agents  # in start order
        self.policies = {agent.name: RestartPolicy() for agent in agents}
        self.stopping = False
        self._restart_tasks: set[asyncio.Task[None]] = set()
        for agent in agents:
            agent.on_exit = self._on_exit

    async def start_all(self) -> None:
        for agent in self.agents:
            await agent.start()

    def _on_exit(self, agent: AgentProcess, code: int) -> None:
        # Take down whatever the agent started (a helper agent's app processes).
        agent.kill_group()
        self._schedule_restart(agent, f"{agent.name} (PID {agent.pid}) exited with "
                                      f"{describe_exit(code)}")

    def _schedule_restart(self, agent: AgentProcess, what: str) -> None:
        if self.stopping:
            return
        delay = self.policies[agent.name].next_delay(time.monotonic())
        log.warning("%s; restarting it%s", what,
                    f" in {delay:.1f} s (crash loop: backing off)" if delay else "")
        task = asyncio.get_running_loop().create_task(self._restart(agent, delay))
        self._restart_tasks.add(task)
        task.add_done_callback(self._restart_tasks.discard)

    async def _restart(self, agent: AgentProcess, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        if self.stopping:
            return
        try:
            await agent.start()
        except AgentStartupError as exc:
            # It ran before, so its configuration is good: whatever it reports now (a
            # stale socket it cannot remove, a full disk) may pass. Back off and retry;
            # only a failure at the server's start stops the server.
            self._schedule_restart(agent, f"{agent.name} failed to restart: {exc}")
        else:
            log.info("%s restarted, PID %d", agent.name, agent.pid)

    async def stop_all(self, timeouts: dict[str, float]) -> None:
        self.stopping = True
        for task in list(self._restart_tasks):
            task.cancel()
        for agent in reversed(self.agents):
            await agent.stop(timeouts.get(agent.name, 5.0))

    def kill_all(self) -> None:
        self.stopping = True
        for agent in self.agents:
            agent.kill_group()
