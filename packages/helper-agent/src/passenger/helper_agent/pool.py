"""The application pool: every group, the shared --max-pool-size, the top-level queue and
the periodic upkeep. It answers the groups' questions about room (`group.Room`) and asks
them through their methods; the status views are in `pool_status`.

Several apps share one pool. When it is full and an app with no process gets a request,
the oldest idle process of another app is stopped to make room (Passenger's rule); if
none is idle, the app waits in the top-level queue until a process somewhere becomes
idle, which is then stopped for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from passenger.common.child_watcher import ChildWatcher
from passenger.common.config import ServerConfig
from passenger.common.log_records import LogLineWriter
from passenger.common.procfs import ProcessGone, ProcFS
from passenger.helper_agent.app_process import AppProcess
from passenger.helper_agent.group import Group
from passenger.helper_agent.spawner import Spawner
from passenger.helper_agent.system import REAL_SYSTEM, System

log = logging.getLogger(__name__)
UPKEEP_INTERVAL = 1.0


MakeSpawner = Callable[[Group, ChildWatcher], Spawner]


class Pool:
    def __init__(self, config: ServerConfig, apps_dir: str, log_writer: LogLineWriter,
                 instance_name: str, access_log: LogLineWriter | None = None,
                 make_spawner: MakeSpawner | None = None,
                 system: System = REAL_SYSTEM) -> None:
        self.config = config
        self.system = system
        self.children = ChildWatcher(asyncio.get_running_loop)
        self.instance_name = instance_name
        self.max_pool_size = config.max_pool_size
        self.procfs = ProcFS()
        self.log_writer = log_writer
        self.access_log = access_log
        self.watchdog_log_lines_dropped = 0  # as the watchdog last told us
        if make_spawner is None:
            def make_spawner(group: Group, children: ChildWatcher) -> Spawner:
                return Spawner(group.config, apps_dir, log_writer, group, children)
        new_spawner = make_spawner
        self.groups = [
            Group(app_config, route, self, lambda g: new_spawner(g, self.children), system)
            for route, app_config in config.app_configs()]
        self.only_group = self.groups[0] if len(self.groups) == 1 else None
        self.waiting: list[Group] = []  # groups in the top-level queue
        self.upkeep_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        for group in self.groups:
            group.maybe_spawn()
        self.upkeep_task = asyncio.get_running_loop().create_task(self._upkeep())

    # -- routing ---------------------------------------------------------------------

    def group_for(self, host: bytes, path: bytes) -> Group | None:
        if len(self.groups) == 1:
            return self.groups[0]
        name = host.split(b":", 1)[0].decode("latin-1").lower()
        text = path.decode("latin-1")
        matching = [g for g in self.groups if g.route_rule.matches(name, text)]
        # The most specific app wins: a host name match, then the longest base URI.
        return max(matching, default=None, key=lambda g: (bool(g.route_rule.server_names),
                                                          len(g.route_rule.base_uri)))

    # -- room (what groups ask) -------------------------------------------------------

    def capacity_used(self) -> int:
        return sum(g.capacity_used() for g in self.groups)

    def has_capacity(self) -> bool:
        return self.capacity_used() < self.max_pool_size

    def may_grow(self, group: Group, used: int, for_queued_requests: bool) -> bool:
        if self.only_group is group:  # alone in the pool: no one to take room from
            return used < self.max_pool_size
        if not for_queued_requests:
            # Only --min-instances wants it: free room goes first to an app whose
            # requests wait with no process, and no other app's process is taken.
            return self.has_capacity() and not any(
                g.starving() for g in self.groups if g is not group)
        return self.has_capacity() or self._make_room_for(group)

    def _make_room_for(self, group: Group) -> bool:
        """Stop the oldest idle process of another app, if the rules allow, to make room:
        an app with processes of its own takes none below another's --min-instances."""
        keep_min = bool(group.active())
        candidates = [(p.last_used, p, g) for g in self.groups if g is not group
                      for p in g.spare_idle_processes(keep_min)]
        if not candidates:
            return False
        _, process, owner = min(candidates, key=lambda c: c[0])
        owner.shut_down(process, f"the pool is full and {group.name} needs room")
        return True

    def wait_for_room(self, group: Group) -> None:
        if group not in self.waiting:
            self.waiting.append(group)

    def on_process_idle(self, group: Group, process: AppProcess) -> None:
        """An idle process is given up when another app is waiting for room."""
        if not self.waiting:
            return  # the usual case, on the path of every request
        if self.has_capacity():
            self.on_room_freed()
        elif any(g is not group for g in self.waiting):
            group.shut_down(process, "another app is waiting for room in the pool")

    def on_room_freed(self) -> None:
        for group in list(self.waiting):
            if not group.has_waiting_requests() or group.maybe_spawn():
                self.waiting.remove(group)

    def busy_sessions(self) -> int:
        return sum(g.busy_sessions() for g in self.groups)

    # -- upkeep ----------------------------------------------------------------------

    async def _upkeep(self) -> None:
        while True:
            await asyncio.sleep(UPKEEP_INTERVAL)
            now = self.system.time()
            for group in self.groups:
                group.upkeep(now, self.config.pool_idle_time, self.private_dirty_kb)
            self.children.reap_orphans()

    def private_dirty_kb(self, pid: int) -> int | None:
        try:
            return (self.procfs.smaps_totals(pid) or {}).get("Private_Dirty")
        except (ProcessGone, OSError, ValueError):
            return None

    # -- administration --------------------------------------------------------------

    def detach(self, pid: int) -> bool:
        return any(g.detach(pid) for g in self.groups)

    def restart(self, app_root_prefix: str, rolling: bool = False) -> list[str]:
        restarted = [g for g in self.groups if g.app_root.startswith(app_root_prefix)]
        for group in restarted:
            if rolling:
                group.rolling_restart()
            else:
                group.restart()
        return [g.name for g in restarted]

    async def stop(self, kill_after: float) -> None:
        if self.upkeep_task is not None:
            self.upkeep_task.cancel()
        await asyncio.gather(*(g.stop(kill_after) for g in self.groups))

    # -- views ----------------------------------------------------------------------

    def log_lines_dropped(self) -> dict[str, int]:
        """Lines each log writer dropped while its logging pipe was full."""
        return {"helper agent, main log": self.log_writer.dropped_total,
                "helper agent, access log":
                    self.access_log.dropped_total if self.access_log else 0,
                "watchdog, main log": self.watchdog_log_lines_dropped}
