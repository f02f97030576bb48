"""The application pool: every group, the shared `max_pool_size`, and the status view."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from passenger.common import SERVER_SOFTWARE, VERSION
from passenger.common.config import ServerConfig
from passenger.common.log_records import LogLineWriter
from passenger.common.procfs import ProcessGone, ProcFS
from passenger.helper_agent.group import Group, PendingRequest
from passenger.helper_agent.spawner import Spawner


class Pool:
    def __init__(self, config: ServerConfig, apps_dir: Path, log_writer: LogLineWriter,
                 instance_name: str) -> None:
        self.config = config
        self.instance_name = instance_name
        self.max_pool_size = config.max_pool_size
        self.procfs = ProcFS()
        self.log_writer = log_writer
        group = Group(config.app_root, config,
                      make_spawner=lambda g: Spawner(config, apps_dir, log_writer, g),
                      has_capacity=self.has_capacity)
        self.groups: dict[str, Group] = {group.name: group}

    def start(self) -> None:
        for group in self.groups.values():
            group.maybe_spawn()

    def capacity_used(self) -> int:
        return sum(g.capacity_used() for g in self.groups.values())

    def has_capacity(self) -> bool:
        return self.capacity_used() < self.max_pool_size

    def group_for(self, host: bytes, path: bytes) -> Group:
        # One app per instance for now; several apps route by host and base URI.
        return next(iter(self.groups.values()))

    def route(self, request: PendingRequest, host: bytes, path: bytes) -> Group:
        group = self.group_for(host, path)
        group.route(request)
        return group

    def busy_sessions(self) -> int:
        return sum(p.sessions for g in self.groups.values() for p in g.processes)

    async def stop(self, kill_after: float) -> None:
        await asyncio.gather(*(g.stop(kill_after) for g in self.groups.values()))

    def _metrics(self, pid: int) -> dict[str, Any]:
        try:
            return {"cpu": round(self.procfs.cpu_percent(pid)),
                    "real_memory_kb": self.procfs.real_memory_kb(pid)}
        except (ProcessGone, OSError, ValueError, IndexError):
            return {"cpu": None, "real_memory_kb": None}

    def snapshot(self) -> dict[str, Any]:
        groups = [g.snapshot(self._metrics) for g in self.groups.values()]
        return {
            "version": VERSION, "server_software": SERVER_SOFTWARE,
            "instance": self.instance_name, "now": time.time(),
            "max_pool_size": self.max_pool_size,
            "process_count": sum(len(g["processes"]) for g in groups),
            "capacity_used": self.capacity_used(),
            "requests_in_top_level_queue": 0,
            "log_lines_dropped": self.log_writer.dropped_total,
            "groups": groups,
        }
