"""The pool as `passenger-status` and the admin API show it: groups, processes with
their CPU and memory (read from /proc as Passenger reports them), counters, and every
WSGI process's thread stacks. Views only read; the rules live in `pool` and `group`."""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import time
from typing import TYPE_CHECKING, Any

from passenger.common import SERVER_SOFTWARE, VERSION
from passenger.common.procfs import ProcessGone, ProcFS
from passenger.helper_agent.app_process import AppProcess, ProcessState

if TYPE_CHECKING:
    from passenger.helper_agent.group import Group
    from passenger.helper_agent.pool import Pool


def pool_snapshot(pool: Pool) -> dict[str, Any]:
    groups = [group_snapshot(g, pool.procfs) for g in pool.groups]
    return {
        "version": VERSION, "server_software": SERVER_SOFTWARE,
        "instance": pool.instance_name, "now": time.time(),
        "max_pool_size": pool.max_pool_size,
        "process_count": sum(len(g["processes"]) for g in groups),
        "capacity_used": pool.capacity_used(),
        "requests_in_top_level_queue": sum(len(g.queue) for g in pool.waiting),
        "log_lines_dropped": pool.log_lines_dropped(),
        "groups": groups,
    }


def group_snapshot(group: Group, procfs: ProcFS) -> dict[str, Any]:
    config, user = group.config, group.spawner.user
    return {
        "name": group.name, "app_root": group.app_root,
        "environment": config.environment,
        "uuid": group.uuid,
        "app_type": "generic" if config.app_start_command else "wsgi",
        "start_command": config.app_start_command or
        f"{config.python} (the Passenger WSGI loader)",
        "startup_file": "" if config.app_start_command else
        os.path.join(config.app_root, config.startup_file),
        "spawn_method": config.spawn_method, "python": config.python,
        "start_timeout": config.start_timeout, "min_instances": config.min_instances,
        "max_instances_per_app": config.max_instances_per_app,
        "user": user.name if user else pwd_name(os.getuid()),
        "uid": user.uid if user else os.getuid(),
        "group": group_name(user.gid if user else os.getgid()),
        "gid": user.gid if user else os.getgid(),
        "server_names": list(group.route_rule.server_names),
        "base_uri": group.route_rule.base_uri,
        "requests_in_queue": len(group.queue), "spawning": group.spawns.reserved,
        "last_spawn_error": group.last_spawn_error,
        "requests_rejected": group.queue.rejected,
        "requests_timed_out": group.queue.timed_out + group.sessions.timed_out,
        "processes": [process_snapshot(p, procfs) for p in group.processes],
    }


def process_snapshot(p: AppProcess, procfs: ProcFS) -> dict[str, Any]:
    return {
        "pid": p.pid, "state": p.state.value, "sessions": p.sessions,
        "processed": p.processed, "spawn_started": p.spawn_started,
        "spawn_ended": p.spawn_ended, "last_used": p.last_used,
        "concurrency": p.concurrency, "request_limit": p.request_limit,
        "retiring": p.retiring_why, **process_metrics(procfs, p.pid),
    }


def process_metrics(procfs: ProcFS, pid: int) -> dict[str, Any]:
    """CPU and memory as Passenger reports them (kB); None where unreadable."""
    try:
        smaps = procfs.smaps_totals(pid) or {}
        private = smaps.get("Private_Dirty")
        return {"cpu": round(procfs.cpu_percent(pid)),
                "real_memory_kb": None if private is None
                else private + smaps.get("Swap", 0),
                "rss_kb": smaps.get("Rss"), "pss_kb": smaps.get("Pss"),
                "private_dirty_kb": private, "swap_kb": smaps.get("Swap"),
                "vmsize_kb": procfs.status_kb(pid, "VmSize")}
    except (ProcessGone, OSError, ValueError, IndexError):
        return {"cpu": None, "real_memory_kb": None}


async def backtraces(pool: Pool) -> list[dict[str, Any]]:
    """Every thread's stack in every WSGI process, asked of all at once."""
    targets = [(g, p) for g in pool.groups for p in g.processes
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


def pwd_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
