"""Process plumbing for the benchmark: /proc readings, bounded waits, and the sweep that
makes sure nothing we started outlives the run.

Every process the benchmark starts gets `PASSENGER_BENCH_RUN=<tag>` in its environment.
Children inherit it (Passenger's daemonized watchdog and temp-dir toucher included, which
re-parent to PID 1), so scanning /proc/*/environ finds them. Not all of them, though:
setproctitle (our agents and apps, gunicorn) writes the new title over the environment
block, so /proc/PID/environ no longer shows the tag; servers.py therefore also remembers
every descendant of its launcher it has seen.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

TAG_VAR = "PASSENGER_BENCH_RUN"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], T | None], timeout: float, interval: float = 0.01,
             what: str = "condition") -> T:
    """Poll until `predicate()` is truthy; raise TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g} s")
        time.sleep(interval)


def http_status(port: int, timeout: float = 5.0) -> int | None:
    """Status of `GET /` on 127.0.0.1:port, or None when no answer could be had."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


# -- /proc ----------------------------------------------------------------------------

def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def parent_pid(pid: int) -> int | None:
    stat = _stat_fields(pid)
    return int(stat[1]) if stat else None


def is_alive(pid: int) -> bool:
    """True for a live process; a zombie counts as dead (it only waits to be reaped)."""
    stat = _stat_fields(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot: with the pid, a process's identity (pids wrap
    around quickly on a busy machine with a small pid_max)."""
    stat = _stat_fields(pid)
    return int(stat[19]) if stat else None


def cpu_seconds(pid: int) -> float | None:
    stat = _stat_fields(pid)
    if stat is None:
        return None
    return (int(stat[11]) + int(stat[12])) / CLOCK_TICKS  # utime, stime


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0])."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def all_pids() -> list[int]:
    return sorted(int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit())


def children(pid: int) -> list[int]:
    return [c for c in all_pids() if parent_pid(c) == pid]


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (one /proc scan)."""
    kids: dict[int, list[int]] = {}
    for c in all_pids():
        parent = parent_pid(c)
        if parent is not None:
            kids.setdefault(parent, []).append(c)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return {c for c in found if is_alive(c)}


def memory_kb(pid: int) -> dict[str, int]:
    """Rss, Pss, Private_Dirty (kB) from smaps_rollup: the kernel's own per-process sums."""
    wanted = {"Rss:": "rss_kb", "Pss:": "pss_kb", "Private_Dirty:": "private_dirty_kb",
              "Swap:": "swap_kb"}
    out: dict[str, int] = {}
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if parts and parts[0] in wanted:
            out[wanted[parts[0]]] = int(parts[1])
    return out


def tagged_pids(tag_prefix: str) -> list[int]:
    """Live processes whose environment carries a tag starting with `tag_prefix`."""
    needle = f"{TAG_VAR}={tag_prefix}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(var.startswith(needle) for var in environ.split(b"\0")) and \
                is_alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


def kill_all(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
