"""An application group: the processes of one app, its request queue and its spawning.

Routing follows Passenger: a request goes to the enabled process with the fewest open
sessions (ties: the one used least recently); when every process is busy it waits in
the group's FIFO queue, and the group spawns another process if the pool has room.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from typing import Any, Protocol

from passenger.common.config import ServerConfig
from passenger.helper_agent.app_process import AppProcess, ProcessState
from passenger.helper_agent.spawner import Spawner, SpawnError

log = logging.getLogger(__name__)
SPAWN_RETRY_FIRST = 0.5
SPAWN_RETRY_MAX = 30.0


class PendingRequest(Protocol):
    """A request as the pool sees it (implemented by the HTTP front end)."""

    def assign(self, process: AppProcess) -> None: ...
    def fail(self, status: int, reason: str) -> None: ...


class Group:
    def __init__(self, name: str, config: ServerConfig, make_spawner: Callable[[Group], Spawner],
                 has_capacity: Callable[[], bool]) -> None:
        self.name = name
        self.config = config
        self.app_root = config.app_root
        self.processes: list[AppProcess] = []
        self.queue: collections.deque[PendingRequest] = collections.deque()
        self.spawner = make_spawner(self)
        self.spawning = 0
        self.spawn_task: asyncio.Task[None] | None = None
        self.has_capacity = has_capacity
        self.last_spawn_error = ""
        self.stopping = False

    # -- routing ---------------------------------------------------------------------

    def route(self, request: PendingRequest) -> None:
        best: AppProcess | None = None
        for p in self.processes:
            if p.accepts_requests and (best is None or (p.sessions, p.last_used)
                                       < (best.sessions, best.last_used)):
                best = p
        if best is None:
            self.queue.append(request)
            self.maybe_spawn()
        else:
            self._assign(best, request)

    def _assign(self, process: AppProcess, request: PendingRequest) -> None:
        process.sessions += 1
        process.last_used = time.time()
        request.assign(process)

    def cancel(self, request: PendingRequest) -> None:
        """A queued request whose client went away."""
        with contextlib.suppress(ValueError):
            self.queue.remove(request)

    def _dispatch_queue(self) -> None:
        while self.queue:
            process = next((p for p in self.processes if p.accepts_requests), None)
            if process is None:
                break
            self._assign(process, self.queue.popleft())
        if self.queue:
            self.maybe_spawn()

    # -- events from processes -------------------------------------------------------

    def on_session_closed(self, process: AppProcess) -> None:
        process.sessions -= 1
        process.processed += 1
        process.last_used = time.time()
        if process.state is ProcessState.SHUTTING_DOWN and process.sessions == 0:
            process.stop_gracefully()
        self._dispatch_queue()

    def on_channel_lost(self, process: AppProcess) -> None:
        """The connection to the app broke: the process is of no more use."""
        if process.state is ProcessState.ENABLED:
            process.change_state(ProcessState.SHUTTING_DOWN)
        self._fail_in_flight(process, "the application process closed its connection")
        process.kill()

    def on_process_exit(self, process: AppProcess) -> None:
        if process.state is not ProcessState.DEAD:
            process.change_state(ProcessState.DEAD)
        if process in self.processes:
            self.processes.remove(process)
            level = logging.INFO if self.stopping else logging.WARNING
            log.log(level, "App process %d (%s) exited with %s%s", process.pid, self.name,
                    process.exit_description, "" if self.stopping else "; replacing it")
        self._fail_in_flight(process, f"the application process exited with "
                                      f"{process.exit_description}")
        if process.channel is not None:
            process.channel.close()
        self._dispatch_queue()
        self.maybe_spawn()

    def _fail_in_flight(self, process: AppProcess, reason: str) -> None:
        channel = process.channel
        if channel is not None and channel.sink is not None:
            sink, channel.sink = channel.sink, None
            sink.on_response_abort(reason)
            process.sessions = max(0, process.sessions - 1)

    # -- spawning --------------------------------------------------------------------

    def alive(self) -> list[AppProcess]:
        return [p for p in self.processes if p.state is ProcessState.ENABLED]

    def capacity_used(self) -> int:
        return len(self.processes) + self.spawning

    def should_spawn(self) -> bool:
        if self.stopping or not self.has_capacity():
            return False
        alive = self.alive()
        if len(alive) < self.config.min_instances:
            return True
        return bool(self.queue) and not any(p.accepts_requests for p in alive)

    def maybe_spawn(self) -> None:
        if self.spawn_task is None and self.should_spawn():
            self.spawn_task = asyncio.get_running_loop().create_task(self._spawn_loop())

    async def _spawn_loop(self) -> None:
        delay = SPAWN_RETRY_FIRST
        try:
            while self.should_spawn():
                self.spawning += 1
                try:
                    process = await self.spawner.spawn()
                except SpawnError as exc:
                    self._spawn_failed(exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, SPAWN_RETRY_MAX)
                    continue
                finally:
                    self.spawning -= 1
                delay = SPAWN_RETRY_FIRST
                self.last_spawn_error = ""
                if process.state is not ProcessState.SPAWNING:  # died right after starting
                    continue
                process.spawn_ended = process.last_used = time.time()
                process.change_state(ProcessState.ENABLED)
                self.processes.append(process)
                log.info("App process %d (%s) is ready", process.pid, self.name)
                if self.stopping:
                    process.stop_gracefully()
                self._dispatch_queue()
        finally:
            self.spawn_task = None

    def _spawn_failed(self, exc: SpawnError) -> None:
        self.last_spawn_error = str(exc)
        details = "\n".join(exc.output[-20:])
        log.error("Could not spawn a process for %s: %s%s", self.name, exc,
                  f"\nApplication output:\n{details}" if details else "")
        while self.queue:
            self.queue.popleft().fail(500, f"The application could not be started: {exc}")

    # -- shutdown --------------------------------------------------------------------

    async def stop(self, kill_after: float) -> None:
        """Stop every process (in-flight requests have had their time): lifeline closed
        and SIGTERM, then SIGKILL after `kill_after` seconds."""
        self.stopping = True
        if self.spawn_task is not None:
            self.spawn_task.cancel()
        while self.queue:
            self.queue.popleft().fail(503, "The server is shutting down")
        for p in list(self.processes):
            if p.state is ProcessState.ENABLED:
                p.change_state(ProcessState.SHUTTING_DOWN)
            p.stop_gracefully()
            p.kill(signal.SIGTERM)
        deadline = time.monotonic() + kill_after
        while self.processes and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for p in list(self.processes):
            log.warning("App process %d did not stop in time; killing it", p.pid)
            p.kill()
        deadline = time.monotonic() + 1.0
        while self.processes and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def snapshot(self, read_metrics: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
        return {
            "name": self.name, "app_root": self.app_root,
            "environment": self.config.environment,
            "requests_in_queue": len(self.queue), "spawning": self.spawning,
            "last_spawn_error": self.last_spawn_error,
            "processes": [{
                "pid": p.pid, "state": p.state.value, "sessions": p.sessions,
                "processed": p.processed, "spawn_started": p.spawn_started,
                "spawn_ended": p.spawn_ended, "last_used": p.last_used,
                "concurrency": p.concurrency, **read_metrics(p.pid),
            } for p in self.processes],
        }
