"""Supervision timings, with no traffic: how fast each server notices and repairs damage.

All times are from the moment we act (kill, start, restart) and come from polling the
server's own view of its pool every few milliseconds (our admin API, Passenger's core
API; gunicorn's and uWSGI's master have none, so there it is the master's live
children), plus plain `GET /` for "first 200".

Failed requests during a kill of the front process and during restart-app are counted
the same way for every server by a `Probe`: one client thread sending `GET /` on a new
connection every 5 ms from just before the act until the pool is whole again; a request
that does not answer 200 within 1 s (refused, reset, an error status, or still waiting
after 1 s, e.g. held in a listen backlog) counts as one failed request.
"""

from __future__ import annotations

import functools
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks import procs
from benchmarks.servers import APP_PROCESSES, Server

POLL = 0.005
SETTLE = 0.5      # idle time before each rep, so nothing is still going on
CLIENT_TIMEOUT = 1.0   # a probe request not answered 200 within this counts as failed
FAILED_NOTE = (f"failed requests per rep (not ms): GET / every {POLL * 1000:g} ms, "
               f"each failed unless 200 within {CLIENT_TIMEOUT:g} s")


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


class Probe:
    """`GET /` in a loop on a thread, POLL apart, each on a new connection with a
    CLIENT_TIMEOUT budget; counts requests that did not answer 200 in time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0
        self.failed = 0
        self.oks: list[tuple[float, float]] = []   # (sent, answered) of each 200 in time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="probe", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            status = procs.http_status(self.port, timeout=CLIENT_TIMEOUT)
            done = time.perf_counter()
            self.sent += 1
            if status == 200 and done - t0 <= CLIENT_TIMEOUT:
                self.oks.append((t0, done))
            else:
                self.failed += 1
            self._stop.wait(POLL)

    def start(self) -> Probe:
        self._thread.start()
        return self

    def first_ok(self, t0: float) -> float | None:
        """When the first 200 came to a request sent at or after t0 (perf_counter)."""
        return next((done for sent, done in list(self.oks) if sent >= t0), None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(CLIENT_TIMEOUT * 3 + 1)


def kill_front(server: Server, reps: int) -> dict[str, Timing]:
    """kill -9 the helper agent (Passenger: core) -> first 200, and -> the pool again;
    requests failed from the kill until both."""
    if server.front_name is None:
        na = Timing(na="n/a (no separate front process)")
        return {"kill_front_first_200": na, "kill_front_pool_back": na,
                "kill_front_failed_requests": na}
    first, pool_back, failed = Timing(), Timing(), Timing()
    for rep in range(reps):
        old_apps = wait_stable(server)
        probe = Probe(server.port).start()
        try:
            time.sleep(0.05)              # the probe is running (and answered) before
            t0 = time.perf_counter()
            if server.kill_front() is None:
                first.notes.append(f"rep {rep + 1}: no {server.front_name} found")
                continue
            try:
                ok = procs.wait_for(functools.partial(probe.first_ok, t0), 30.0, POLL,
                                    "first 200")
                first.values_ms.append((ok - t0) * 1000)
            except TimeoutError:
                first.notes.append(f"rep {rep + 1}: no 200 within 30 s")
            try:
                procs.wait_for(_replaced(server, old_apps), 30.0, POLL, "pool back")
                pool_back.values_ms.append(_ms_since(t0))
            except TimeoutError:
                pool_back.notes.append(f"rep {rep + 1}: pool not back within 30 s")
        finally:
            probe.stop()
        failed.values_ms.append(float(probe.failed))
    _say(f"{server.label}: kill -9 {server.front_name} -> first 200: {first.summary()} ms; "
         f"failed requests per rep: {[int(x) for x in failed.values_ms]}")
    failed.notes.append(FAILED_NOTE)
    return {"kill_front_first_200": first, "kill_front_pool_back": pool_back,
            "kill_front_failed_requests": failed}


def restart_app(server: Server, reps: int) -> dict[str, Timing]:
    """restart-app -> every old process gone from the pool and 2 new ones listed;
    requests failed meanwhile."""
    done, command, failed = Timing(), Timing(), Timing()
    for rep in range(reps):
        old = wait_stable(server)
        probe = Probe(server.port).start()
        try:
            time.sleep(0.05)
            t0 = time.perf_counter()
            how = server.restart_app()
            if how is None:
                na = Timing(na="n/a (not implemented yet)")
                return {"restart_app_replaced": na, "restart_app_command": na,
                        "restart_app_failed_requests": na}
            command.values_ms.append(_ms_since(t0))
            try:
                procs.wait_for(_replaced(server, old), 30.0, POLL, "all replaced")
                done.values_ms.append(_ms_since(t0))
                # Until a request answers after the replacement too: a restart is over
                # for clients when they are served again.
                t1 = time.perf_counter()
                procs.wait_for(functools.partial(probe.first_ok, t1), 10.0, POLL, "a 200")
            except TimeoutError:
                done.notes.append(f"rep {rep + 1}: not all replaced within 30 s")
        finally:
            probe.stop()
        failed.values_ms.append(float(probe.failed))
    done.notes.append(f"via {server.restart_name}")
    failed.notes.append(FAILED_NOTE)
    _say(f"{server.label}: {server.restart_name} -> all replaced: {done.summary()} ms; "
         f"failed requests per rep: {[int(x) for x in failed.values_ms]}")
    return {"restart_app_replaced": done, "restart_app_command": command,
            "restart_app_failed_requests": failed}


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
