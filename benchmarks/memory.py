"""Memory: private dirty RSS (`Private_Dirty` of /proc/PID/smaps_rollup, what a process
costs the machine on its own) of every process of each server, read twice on the hello
app: idle before any load (once every server is ready, after a short settle), and idle
again after about a minute of load (the hello throughput runs count when they gave each
server ≥ `load_s` seconds of wrk; otherwise each server gets `wrk -c64` on `GET /` for
the missing seconds first).

"Agents" are the server's own processes besides the app (servers.py: role `agent`):
ours the watchdog, helper agent and logging agent (the preloader is app-side, listed
apart); Passenger its watchdog, core and temp-dir toucher; gunicorn and uWSGI their master.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import procs, wrk
from benchmarks.servers import Server
from benchmarks.throughput import wait_idle

SETTLE = 1.0    # s of quiet before a reading, so that in-flight work has finished
TOP_UP_CONNECTIONS = 64


def snapshot(server: Server) -> list[dict[str, Any]]:
    """Private dirty RSS etc. (kB) of each process of `server`, with its role."""
    return [{"role": p.role, "name": p.name, "pid": p.pid, **procs.memory_kb(p.pid)}
            for p in server.processes()]


def read_all(servers: list[Server]) -> dict[str, list[dict[str, Any]]]:
    """A snapshot of each server once it is idle (and SETTLE s after that)."""
    for s in servers:
        wait_idle(s)
    time.sleep(SETTLE)
    return {s.label: snapshot(s) for s in servers}


def agents_kb(entries: list[dict[str, Any]]) -> int:
    return sum(e.get("private_dirty_kb", 0) for e in entries if e["role"] == "agent")


def top_up(servers: list[Server], seconds: float, script: Path) -> float:
    """wrk -c64 for `seconds` on each server in turn (bounded by wrk's own -d); -> the
    seconds given to each."""
    if seconds <= 0:
        return 0.0
    for s in servers:
        print(f"  memory: {seconds:.0f} s of hello load on {s.label}", file=sys.stderr,
              flush=True)
        wrk.run(s.port, TOP_UP_CONNECTIONS, seconds, script)
    return seconds
