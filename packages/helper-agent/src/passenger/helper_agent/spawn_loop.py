"""Spawning an app's processes one at a time, retrying failures after a growing delay.

The loop knows nothing of groups or pools: it is told how to spawn, whether another
process is still wanted, and whom to tell of each outcome. Its place in the pool is
reserved (`reserved`, counted as capacity used) before each spawn starts, so that two
apps cannot both take the last place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from passenger.helper_agent.app_process import AppProcess
from passenger.helper_agent.spawn_error import SpawnError

SPAWN_RETRY_FIRST = 0.5
SPAWN_RETRY_MAX = 30.0


class SpawnLoop:
    def __init__(self, spawn: Callable[[], Awaitable[AppProcess]],
                 still_wanted: Callable[[], bool],
                 on_spawned: Callable[[AppProcess], None],
                 on_failed: Callable[[SpawnError], None],
                 on_ended: Callable[[], None]) -> None:
        self._spawn = spawn
        self._still_wanted = still_wanted
        self._on_spawned = on_spawned
        self._on_failed = on_failed
        self._on_ended = on_ended
        self.reserved = 0        # places taken in the pool by a spawn under way (0 or 1)
        self.retrying = False    # waiting out the delay after a failed spawn
        self.task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.task is not None

    def start(self) -> None:
        """The first place is reserved now, before the task first runs."""
        self.reserved = 1
        self.task = asyncio.get_running_loop().create_task(self._run())

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _run(self) -> None:
        delay = SPAWN_RETRY_FIRST
        try:
            while True:
                try:
                    process = await self._spawn()
                except Exception as exc:  # an unexpected error must not end the loop
                    self.reserved = 0
                    self._on_failed(exc if isinstance(exc, SpawnError) else SpawnError(
                        f"{type(exc).__name__}: {exc}", []))
                    self.retrying = True
                    try:
                        await asyncio.sleep(delay)
                    finally:
                        self.retrying = False
                    delay = min(delay * 2, SPAWN_RETRY_MAX)
                else:
                    self.reserved = 0
                    delay = SPAWN_RETRY_FIRST
                    self._on_spawned(process)
                if not self._still_wanted():
                    break
                self.reserved = 1
        finally:
            self.reserved = 0
            self.task = None
        self._on_ended()
