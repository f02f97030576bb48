"""passenger-status: the live state of a running instance, in Passenger's layouts.

Usage:
  passenger-status [options] [NAME]

Options:
  --show=WHAT       What to show: pool (the default, Passenger's text layout), json (the
                    live pool), requests (JSON: the requests in flight and queued),
                    server (JSON: the server as a whole), xml (Passenger's pool XML), or
                    backtraces (every thread's stack in every WSGI app process).
  --instance NAME   The instance to show (the same as NAME), when several run.
  --no-header       Do not display the header (version, date, instance).
  -v, --verbose     Show verbose information.
  -h, --help        Show this help.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from passenger.cli.command_line import entry_point, parse
from passenger.cli.instances import NoInstance, select_instance
from passenger.cli.pool_xml import duration, pool_xml
from passenger.cli.terminal import protect_output
from passenger.common import admin_paths
from passenger.common.admin_client import AdminError, request

SHOW_CHOICES = ("pool", "json", "requests", "server", "xml", "backtraces")


def format_header(pool: dict[str, Any]) -> str:
    date = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(pool["now"]))
    return (f"Version : {pool['version']}\nDate    : {date}\n"
            f"Instance: {pool['instance']} ({pool['server_software']})\n")


def format_process(p: dict[str, Any], now: float) -> str:
    cpu = "?" if p.get("cpu") is None else f"{p['cpu']}%"
    memory = "?" if p.get("real_memory_kb") is None else f"{p['real_memory_kb'] // 1024}M"
    uptime = duration(now - p["spawn_ended"]) if p.get("spawn_ended") else "0s"
    last_used = duration(now - p["last_used"]) if p.get("last_used") else "0s"
    text = (f"  * PID: {p['pid']:<5}   Sessions: {p['sessions']:<2}      "
            f"Processed: {p['processed']:<5}   Uptime: {uptime}\n"
            f"    CPU: {cpu:<5}   Memory  : {memory:<5}   Last used: {last_used} ago\n")
    if p.get("state") == "shutting_down":
        text += "    Shutting down...\n"
    elif p.get("retiring"):
        text += f"    Being replaced: {p['retiring']}\n"
    return text


def format_pool(pool: dict[str, Any], header: bool = True) -> str:
    now = pool["now"]
    out = [format_header(pool) + "\n"] if header else []
    out.append("----------- General information -----------\n"
               f"Max pool size : {pool['max_pool_size']}\n"
               f"App groups    : {len(pool['groups'])}\n"
               f"Processes     : {pool['process_count']}\n"
               f"Requests in top-level queue : {pool['requests_in_top_level_queue']}\n")
    drops = pool.get("log_lines_dropped") or {}
    if isinstance(drops, dict) and any(drops.values()):
        out.append("Log lines dropped : " + ", ".join(
            f"{n} ({writer})" for writer, n in drops.items() if n) + "\n")
    out.append("\n----------- Application groups -----------\n")
    for group in pool["groups"]:
        out.append(f"{group['name']}:\n  App root: {group['app_root']}\n")
        if group.get("spawning"):
            n = group["spawning"]
            out.append(f"  (spawning {n} new process{'es' if n > 1 else ''}...)\n")
        out.append(f"  Requests in queue: {group['requests_in_queue']}\n")
        if group.get("requests_rejected"):
            out.append(f"  Requests rejected (queue full): {group['requests_rejected']}\n")
        if group.get("requests_timed_out"):
            out.append(f"  Requests timed out: {group['requests_timed_out']}\n")
        if group.get("last_spawn_error"):
            out.append(f"  Last spawn error: {group['last_spawn_error']}\n")
        out.extend(format_process(p, now) for p in group["processes"])
        out.append("\n")
    return "".join(out)


def format_backtraces(found: list[dict[str, Any]]) -> str:
    if not found:
        return "No WSGI app process is running.\n"
    out = []
    for entry in found:
        out.append(f"----------- Process {entry['pid']} ({entry['app']}) -----------\n")
        out.append((entry.get("backtraces") or f"(no backtraces: {entry.get('error')})")
                   + "\n\n")
    return "".join(out)


def header_json(pool: dict[str, Any], data: Any, header: bool) -> str:
    """Passenger's `--show=server` layout: the header, a blank line, the JSON."""
    text = json.dumps(data, indent=2) + "\n"
    return format_header(pool) + "\n" + text if header else text


@entry_point
def main(argv: list[str] | None = None) -> None:
    protect_output()
    args = parse(__doc__ or "", argv, "passenger-status")
    show = args["--show"] or "pool"
    if show not in SHOW_CHOICES:
        print(f"passenger-status: --show: {show!r} is not supported; allowed: "
              f"{', '.join(SHOW_CHOICES)}", file=sys.stderr)
        sys.exit(2)
    if args["NAME"] and args["--instance"] and args["NAME"] != args["--instance"]:
        print("passenger-status: NAME and --instance name different instances; give one",
              file=sys.stderr)
        sys.exit(2)
    header = not args["--no-header"]
    try:
        instance = select_instance(args["NAME"] or args["--instance"])
        admin_socket = instance.admin_socket
        pool = request(admin_socket, "GET", admin_paths.POOL)
        if show == "requests":
            out = header_json(pool, request(admin_socket, "GET", admin_paths.REQUESTS), header)
        elif show == "server":
            out = header_json(pool, request(admin_socket, "GET", admin_paths.SERVER), header)
        elif show == "backtraces":
            found = request(admin_socket, "GET", admin_paths.BACKTRACES, timeout=30)
            out = (format_header(pool) + "\n" if header else "") + format_backtraces(found)
        elif show == "xml":
            out = pool_xml(pool)
        elif show == "json":
            out = json.dumps(pool, indent=2) + "\n"
        else:
            out = format_pool(pool, header=header)
    except (NoInstance, AdminError) as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
    sys.stdout.write(out)


if __name__ == "__main__":
    main()
