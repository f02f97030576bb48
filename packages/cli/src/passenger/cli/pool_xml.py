"""Passenger's pool XML (`passenger-status --show=xml`), from our pool snapshot: the
elements Passenger 6 prints, in its order, where we have the value."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

BUSY = 2147483647  # Passenger's "busyness" of a process with every slot taken


def duration(seconds: float) -> str:
    """Passenger's style: `11s`, `4m 31s`, `2h 0m 5s`, `1d 3h 2m 0s`."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if days:
        parts.append(f"{days}d")
    if days or hours:
        parts.append(f"{hours}h")
    if days or hours or minutes:
        parts.append(f"{minutes}m")
    parts.append(f"{secs}s")
    return " ".join(parts)


def _add(parent: ET.Element, tag: str, value: object = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if value is not None:
        element.text = str(value).lower() if isinstance(value, bool) else str(value)
    return element


def _micros(t: float) -> int:
    return int(t * 1_000_000)


def pool_xml(pool: dict[str, Any]) -> str:
    now = pool["now"]
    info = ET.Element("info", {"version": "3"})
    _add(info, "passenger_version", pool["version"])
    _add(info, "group_count", len(pool["groups"]))
    _add(info, "process_count", pool["process_count"])
    _add(info, "max", pool["max_pool_size"])
    _add(info, "capacity_used", pool["capacity_used"])
    _add(info, "get_wait_list_size", pool["requests_in_top_level_queue"])
    supergroups = _add(info, "supergroups")
    for g in pool["groups"]:
        processes = g["processes"]
        enabled = sum(p["state"] == "enabled" for p in processes)
        disabling = sum(p["state"] == "shutting_down" for p in processes)
        supergroup = _add(supergroups, "supergroup")
        _add(supergroup, "name", g["name"])
        _add(supergroup, "state", "READY")
        _add(supergroup, "get_wait_list_size", g["requests_in_queue"])
        _add(supergroup, "capacity_used", len(processes))
        group = _add(supergroup, "group", default="true")
        for tag, value in (
                ("name", g["name"]), ("component_name", g["name"]),
                ("app_root", g["app_root"]), ("app_type", _app_type(g)),
                ("environment", g["environment"]), ("uuid", g.get("uuid")),
                ("enabled_process_count", enabled),
                ("disabling_process_count", disabling), ("disabled_process_count", 0),
                ("capacity_used", len(processes)),
                ("get_wait_list_size", g["requests_in_queue"]),
                ("disable_wait_list_size", 0),
                ("processes_being_spawned", g.get("spawning", 0)),
                ("life_status", "ALIVE"), ("user", g.get("user")), ("uid", g.get("uid")),
                ("group", g.get("group")), ("gid", g.get("gid"))):
            _add(group, tag, value)
        options = _add(group, "options")
        for tag, value in (
                ("app_root", g["app_root"]), ("app_group_name", g["name"]),
                ("app_type", _app_type(g)), ("start_command", g.get("start_command")),
                ("startup_file", g.get("startup_file")),
                ("process_title", "Passenger WsgiApp"),
                ("start_timeout", g.get("start_timeout", 90) * 1000),
                ("environment", g["environment"]), ("base_uri", g.get("base_uri", "/")),
                ("spawn_method", g.get("spawn_method")),
                ("integration_mode", "standalone"), ("python", g.get("python")),
                ("min_processes", g.get("min_instances")),
                ("max_processes", g.get("max_instances_per_app"))):
            if value is not None:
                _add(options, tag, value)
        process_list = _add(group, "processes")
        for p in processes:
            _add_process(process_list, p, now)
    ET.indent(info, space="   ")
    body = ET.tostring(info, encoding="us-ascii").decode("ascii")  # the rest as &#NNN;
    body = body.split("?>", 1)[-1].lstrip("\n")
    return '<?xml version="1.0" encoding="iso-8859-1"?>\n' + body + "\n"


def _app_type(group: dict[str, Any]) -> str:
    return "python" if group.get("app_type", "wsgi") == "wsgi" else "generic"


def _add_process(parent: ET.Element, p: dict[str, Any], now: float) -> None:
    process = _add(parent, "process")
    concurrency = p.get("concurrency") or 1
    spawned, last_used = p.get("spawn_ended") or 0.0, p.get("last_used") or 0.0
    memory = {tag: p.get(key) for tag, key in (
        ("rss", "rss_kb"), ("pss", "pss_kb"), ("private_dirty", "private_dirty_kb"),
        ("swap", "swap_kb"), ("real_memory", "real_memory_kb"), ("vmsize", "vmsize_kb"))}
    has_metrics = p.get("cpu") is not None
    for tag, value in (
            ("pid", p["pid"]), ("concurrency", concurrency), ("sessions", p["sessions"]),
            ("busyness", min(BUSY, p["sessions"] * BUSY // concurrency)),
            ("processed", p["processed"]),
            ("spawn_start_time", _micros(p.get("spawn_started") or 0.0)),
            ("spawn_end_time", _micros(spawned)),
            ("last_used", _micros(last_used or spawned)),
            ("last_used_desc", f"{duration(now - (last_used or spawned))} ago"),
            ("uptime", duration(now - spawned) if spawned else "0s"),
            ("life_status", "ALIVE"),
            ("enabled", "DISABLING" if p["state"] == "shutting_down" else "ENABLED"),
            ("has_metrics", has_metrics), ("cpu", p.get("cpu")), *memory.items()):
        if value is not None:
            _add(process, tag, value)
