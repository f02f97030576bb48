"""The application pool: every group, the shared --max-pool-size, the top-level queue, the
periodic upkeep (idle processes, memory limits) and the status view.

Several apps share one pool. When it is full and an app with no process gets a request,
the oldest idle process of another app is stopped to make room (Passenger's rule); if
none is idle, the app waits in the top-level queue until a process somewhere becomes
idle, which is then stopped for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from passenger.common import SERVER_SOFTWARE, VERSION
from passenger.common.config import ServerConfig
from passenger.common.log_records import LogLineWriter
from passenger.common.procfs import ProcessGone, ProcFS
from passenger.helper_agent.app_process import AppProcess, ProcessState
from passenger.helper_agent.group import Group
from passenger.helper_agent.spawner import WATCHED_PIDS, Spawner

log = logging.getLogger(__name__)
UPKEEP_INTERVAL = 1.0


class Pool:
    def __init__(self, config: ServerConfig, apps_dir: str, log_writer: LogLineWriter,
                 instance_name: str, access_log: LogLineWriter | None = None) -> None:
        self.config = config
        self.instance_name = instance_name
        self.max_pool_size = config.max_pool_size
        self.procfs = ProcFS()
        self.log_writer = log_writer
        self.access_log = access_log
        self.watchdog_log_lines_dropped = 0  # as the watchdog last told us
        self.groups = [
            Group(app_config, route, self,
                  make_spawner=lambda g: Spawner(g.config, apps_dir, log_writer, g))
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

    # -- capacity --------------------------------------------------------------------

    def capacity_used(self) -> int:
        return sum(g.capacity_used() for g in self.groups)

    def has_capacity(self) -> bool:
        return self.capacity_used() < self.max_pool_size

    def free_capacity_for(self, group: Group) -> bool:
        """Stop the oldest idle process of another app, if the rules allow, to make room."""
        if len(self.groups) == 1:
            return False
        candidates = [
            (p.last_used, p, g) for g in self.groups if g is not group
            for p in g.active() if p.idle
            and (not group.active() or len(g.active()) > g.config.min_instances)]
        if not candidates:
            return False
        _, process, owner = min(candidates, key=lambda c: c[0])
        owner.shut_down(process, f"the pool is full and {group.name} needs room")
        return True

    def starving_groups(self, other_than: Group) -> list[Group]:
        """Apps with requests waiting and no process to serve them."""
        return [g for g in self.groups
                if g is not other_than and g.queue and not g.active() and not g.spawning]

    def wait_for_capacity(self, group: Group) -> None:
        if group not in self.waiting:
            self.waiting.append(group)

    def on_process_idle(self, process: AppProcess) -> None:
        """An idle process is given up when another app is waiting for room."""
        if not self.waiting:
            return  # the usual case, on the path of every request
        if self.has_capacity():
            self.on_capacity_freed()
            return
        owner = next(g for g in self.groups if process in g.processes)
        if any(g is not owner for g in self.waiting):
            owner.shut_down(process, "another app is waiting for room in the pool")

    def on_capacity_freed(self) -> None:
        for group in list(self.waiting):
            if not group.queue:
                self.waiting.remove(group)
                continue
            group.maybe_spawn()
            if group.spawn_task is not None:
                self.waiting.remove(group)

    def busy_sessions(self) -> int:
        return sum(p.sessions for g in self.groups for p in g.processes)

    # -- upkeep ----------------------------------------------------------------------

    async def _upkeep(self) -> None:
        while True:
            await asyncio.sleep(UPKEEP_INTERVAL)
            now = time.time()
            for group in self.groups:
                self._stop_idle_processes(group, now)
                self._enforce_memory_limit(group)
                group.spawner.stop_idle_preloader()
            reap_orphans()

    def _stop_idle_processes(self, group: Group, now: float) -> None:
        idle_time = self.config.pool_idle_time
        if not idle_time:
            return
        for process in sorted(group.active(), key=lambda p: p.last_used):
            if len(group.active()) <= group.config.min_instances:
                return
            if process.idle and now - process.last_used >= idle_time:
                group.shut_down(process, f"idle for more than {idle_time} s "
                                         f"(--pool-idle-time)")

    def _enforce_memory_limit(self, group: Group) -> None:
        limit_mb = group.config.memory_limit
        if not limit_mb:
            return
        for process in group.active():
            if process.retiring:
                continue
            try:
                totals = self.procfs.smaps_totals(process.pid)
            except (ProcessGone, OSError):
                continue
            private_dirty_kb = (totals or {}).get("Private_Dirty", 0)
            if private_dirty_kb > limit_mb * 1024:
                group.replace(process, "memory_limit",
                              f"uses {private_dirty_kb / 1024:.0f} MB of private dirty "
                              f"memory, over --memory-limit {limit_mb} MB")

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

    def _metrics(self, pid: int) -> dict[str, Any]:
        """CPU and memory as Passenger reports them (kB); None where unreadable."""
        try:
            smaps = self.procfs.smaps_totals(pid) or {}
            private = smaps.get("Private_Dirty")
            return {"cpu": round(self.procfs.cpu_percent(pid)),
                    "real_memory_kb": None if private is None
                    else private + smaps.get("Swap", 0),
                    "rss_kb": smaps.get("Rss"), "pss_kb": smaps.get("Pss"),
                    "private_dirty_kb": private, "swap_kb": smaps.get("Swap"),
                    "vmsize_kb": self.procfs.status_kb(pid, "VmSize")}
        except (ProcessGone, OSError, ValueError, IndexError):
            return {"cpu": None, "real_memory_kb": None}

    def private_dirty_kb(self, pid: int) -> int | None:
        try:
            return (self.procfs.smaps_totals(pid) or {}).get("Private_Dirty")
        except (ProcessGone, OSError, ValueError):
            return None

    async def backtraces(self) -> list[dict[str, Any]]:
        """Every thread's stack in every WSGI process, asked of all at once."""
        targets = [(g, p) for g in self.groups for p in g.processes
                   if p.state in (ProcessState.ENABLED, ProcessState.SHUTTING_DOWN)
                   and not p.own_process_group]

        async def one(group: Group, process: AppProcess) -> dict[str, Any]:
            entry: dict[str, Any] = {"app": group.name, "pid": process.pid}
            try:
                entry["backtraces"] = await group.spawner.backtraces(process)
            except (TimeoutError, ValueError) as exc:
                entry["error"] = str(exc) or "no answer within 3 s"
            return entry
        return list(await asyncio.gather(*(one(g, p) for g, p in targets)))

    def snapshot(self) -> dict[str, Any]:
        groups = [g.snapshot(self._metrics) for g in self.groups]
        return {
            "version": VERSION, "server_software": SERVER_SOFTWARE,
            "instance": self.instance_name, "now": time.time(),
            "max_pool_size": self.max_pool_size,
            "process_count": sum(len(g["processes"]) for g in groups),
            "capacity_used": self.capacity_used(),
            "requests_in_top_level_queue": sum(len(g.queue) for g in self.waiting),
            "log_lines_dropped": self.log_lines_dropped(),
            "groups": groups,
        }


    def log_lines_dropped(self) -> dict[str, int]:
        """Lines each log writer dropped while its logging pipe was full."""
        return {"helper agent, main log": self.log_writer.dropped_total,
                "helper agent, access log":
                    self.access_log.dropped_total if self.access_log else 0,
                "watchdog, main log": self.watchdog_log_lines_dropped}


def reap_orphans() -> None:
    """As a child subreaper we inherit orphans that are not ours (say, an app's own
    daemonized child): wait for those, leave the ones a pidfd watcher will reap."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid in WATCHED_PIDS:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, 0)
