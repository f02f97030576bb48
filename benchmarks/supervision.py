"""Supervision timings, with no traffic: how fast each server notices and repairs damage.

All times are from the moment we act (kill, start, restart) and come from polling the
server's own view of its pool every few milliseconds (our admin API, Passenger's core
API; gunicorn's master has none, so there it is the master's live children), plus plain
`GET /` for "first 200".
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks import procs
from benchmarks.servers import APP_PROCESSES, Server

POLL = 0.005
SETTLE = 0.5      # idle time before each rep, so nothing is still going on


@dataclass
class Timing:
    """One measurement over reps: ms values, or why there are none (`na`)."""

    values_ms: list[float] = field(default_factory=list)
    na: str = ""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.na:
            return self.na
        if not self.values_ms:
            return "failed"
        v = self.values_ms
        text = f"{statistics.median(v):.0f} [{min(v):.0f}–{max(v):.0f}]"
        return text

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"values_ms": [round(x, 1) for x in self.values_ms]}
        if self.values_ms:
            out |= {"median_ms": round(statistics.median(self.values_ms), 1),
                    "min_ms": round(min(self.values_ms), 1),
                    "max_ms": round(max(self.values_ms), 1)}
        if self.na:
            out["na"] = self.na
        if self.notes:
            out["notes"] = self.notes
        return out


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def _say(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


def wait_stable(server: Server, timeout: float = 30.0) -> list[int]:
    """Until the pool lists its 2 processes, then SETTLE seconds of quiet."""
    def full() -> list[int] | None:
        pool = server.pool_pids()
        if pool and len(pool) >= APP_PROCESSES and all(procs.is_alive(x) for x in pool):
            return pool
        return None
    pids = procs.wait_for(full, timeout, 0.02, f"{server.label}: {APP_PROCESSES} processes")
    time.sleep(SETTLE)
    return pids


def kill_app_idle(server: Server, reps: int) -> dict[str, Timing]:
    """kill -9 one idle app process -> the pool lists 2 processes again, none the dead one."""
    back, dropped = Timing(), Timing()
    for rep in range(reps):
        pids = wait_stable(server)
        victim = pids[rep % len(pids)]
        t0 = time.perf_counter()
        procs.kill_all([victim])
        seen_drop = False
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            pool = server.pool_pids()
            if pool is not None and victim not in pool:
                if not seen_drop:
                    seen_drop = True
                    dropped.values_ms.append(_ms_since(t0))
                if len(pool) >= APP_PROCESSES:
                    back.values_ms.append(_ms_since(t0))
                    break
            time.sleep(POLL)
        else:
            back.notes.append(f"rep {rep + 1}: not back within 20 s")
    _say(f"{server.label}: kill -9 app -> back to {APP_PROCESSES}: {back.summary()} ms")
    return {"kill_app_back_to_min": back, "kill_app_dropped": dropped}


def kill_front(server: Server, reps: int) -> dict[str, Timing]:
    """kill -9 the helper agent (Passenger: core) -> first 200, and -> the pool again."""
    if server.front_name is None:
        na = Timing(na="n/a (no separate front process)")
        return {"kill_front_first_200": na, "kill_front_pool_back": na,
                "kill_front_failed_requests": na}
    first, pool_back, failed = Timing(), Timing(), Timing()
    for rep in range(reps):
        old_apps = wait_stable(server)
        t0 = time.perf_counter()
        if server.kill_front() is None:
            first.notes.append(f"rep {rep + 1}: no {server.front_name} found")
            continue
        failures = 0
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            if procs.http_status(server.port, timeout=10) == 200:
                first.values_ms.append(_ms_since(t0))
                break
            failures += 1
            time.sleep(POLL)
        failed.values_ms.append(float(failures))
        try:
            procs.wait_for(_replaced(server, old_apps), 30.0, POLL, "pool back")
            pool_back.values_ms.append(_ms_since(t0))
        except TimeoutError:
            pool_back.notes.append(f"rep {rep + 1}: pool not back within 30 s")
    _say(f"{server.label}: kill -9 {server.front_name} -> first 200: {first.summary()} ms; "
         f"failed requests per rep: {[int(x) for x in failed.values_ms]}")
    failed.notes.append("failed requests per rep (not ms)")
    return {"kill_front_first_200": first, "kill_front_pool_back": pool_back,
            "kill_front_failed_requests": failed}


def restart_app(server: Server, reps: int) -> dict[str, Timing]:
    """restart-app -> every old process gone from the pool and 2 new ones listed."""
    done, command = Timing(), Timing()
    for rep in range(reps):
        old = wait_stable(server)
        t0 = time.perf_counter()
        how = server.restart_app()
        if how is None:
            na = Timing(na="n/a (not implemented yet)")
            return {"restart_app_replaced": na, "restart_app_command": na}
        command.values_ms.append(_ms_since(t0))
        try:
            procs.wait_for(_replaced(server, old), 30.0, POLL, "all replaced")
            done.values_ms.append(_ms_since(t0))
        except TimeoutError:
            done.notes.append(f"rep {rep + 1}: not all replaced within 30 s")
    done.notes.append(f"via {server.restart_name}")
    _say(f"{server.label}: {server.restart_name} -> all replaced: {done.summary()} ms")
    return {"restart_app_replaced": done, "restart_app_command": command}


def start_to_first_200(make_server: Callable[[], Server], reps: int) -> dict[str, Timing]:
    """Cold `start` -> first 200, -> both processes listed, and the graceful stop after."""
    first, full, stop = Timing(), Timing(), Timing()
    label = ""
    for _ in range(reps):
        server = make_server()
        label = server.label
        try:
            t0 = time.perf_counter()
            server.start()
            procs.wait_for(_answers_or_exited(server), 60.0, POLL, f"{label} first 200")
            if _exited(server):
                raise RuntimeError(f"{label} exited:\n{server.tail_console()}")
            first.values_ms.append(_ms_since(t0))
            procs.wait_for(_replaced(server, []), 60.0, POLL,
                           f"{label} {APP_PROCESSES} processes")
            full.values_ms.append(_ms_since(t0))
            time.sleep(SETTLE)
        finally:
            seconds = server.stop()
        if seconds >= 0:
            stop.values_ms.append(seconds * 1000)
        else:
            stop.notes.append("had to be forced (SIGKILL)")
    _say(f"{label}: start -> first 200: {first.summary()} ms; stop: {stop.summary()} ms")
    return {"start_first_200": first, "start_all_processes": full, "stop": stop}


def _replaced(server: Server, old: list[int]) -> Callable[[], bool]:
    """Predicate: the pool lists 2 processes again and none of `old`."""
    def check() -> bool:
        pool = server.pool_pids()
        return pool is not None and len(pool) >= APP_PROCESSES and not set(pool) & set(old)
    return check


def _answers_or_exited(server: Server) -> Callable[[], bool]:
    def check() -> bool:
        return procs.http_status(server.port, timeout=5) == 200 or _exited(server)
    return check


def _exited(server: Server) -> bool:
    return server.proc is not None and server.proc.poll() is not None
