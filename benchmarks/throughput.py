"""The throughput part: wrk against every server, one scenario (app) at a time, and where
the CPU went. After every wrk run the harness waits until the server is idle again
(wait_idle), so that no run starts against the backlog the previous one left.

In round r (counting from 0) the order of the servers is rotated to start at server
r mod n, for each connection count of that round: a slow moment of a shared machine, or
whatever the previous run left behind (warm caches, a busy CPU), does not always fall on
the same server.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from benchmarks import procs, wrk
from benchmarks.servers import Server

T = TypeVar("T")
APPS = "apps"        # every app process of a server, summed
IDLE_WINDOW = 0.2    # s
IDLE_SHARE = 0.05    # of one core: "idle" for wait_idle()
IDLE_TIMEOUT = 10.0  # s


@dataclass
class Run:
    scenario: str
    server: str
    round: int
    position: int                 # 0 = first server measured in its block
    result: wrk.WrkResult
    cpu_s: dict[str, float]       # CPU seconds (utime + stime) per process name
    elapsed_s: float
    front: str | None             # name of the front process in cpu_s, if the server has one
    loadavg_before: float

    @property
    def cpu_pct(self) -> dict[str, float]:
        """% of one core each process name used during the run."""
        return {n: round(100 * s / self.elapsed_s, 1) for n, s in self.cpu_s.items()}

    def us_per_request(self, name: str) -> float | None:
        """CPU µs per request served of process name `name` (None when not there)."""
        if name not in self.cpu_s or not self.result.requests:
            return None
        return 1e6 * self.cpu_s[name] / self.result.requests

    @property
    def front_us(self) -> float | None:
        return self.us_per_request(self.front) if self.front else None

    @property
    def apps_us(self) -> float | None:
        return self.us_per_request(APPS)

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "server": self.server, "round": self.round,
                "position": self.position, **self.result.to_json(),
                "cpu_seconds": {n: round(s, 3) for n, s in self.cpu_s.items()},
                "cpu_pct_of_one_core": self.cpu_pct, "front_process": self.front,
                "front_cpu_us_per_request": self.front_us,
                "apps_cpu_us_per_request": self.apps_us,
                "loadavg_1m_before": self.loadavg_before}


def cpu_times(server: Server) -> dict[int, tuple[str, float]]:
    """pid -> (process name, CPU seconds so far); app processes are all named `apps`."""
    out = {}
    for p in server.processes():
        if p.role == "launcher":
            continue
        seconds = procs.cpu_seconds(p.pid)
        if seconds is not None:
            out[p.pid] = (APPS if p.role == "app" else p.name, seconds)
    return out


def cpu_used(before: dict[int, tuple[str, float]],
             after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds each process name used between two readings (apps summed; a process
    that appeared in between counts from 0)."""
    used: dict[str, float] = {}
    for pid, (name, end) in after.items():
        start = before.get(pid, (name, 0.0))[1]
        used[name] = used.get(name, 0.0) + max(0.0, end - start)
    return used


def wait_idle(server: Server, timeout: float = IDLE_TIMEOUT) -> float:
    """Until the server's processes together use under IDLE_SHARE of one core over an
    IDLE_WINDOW; -> seconds waited (the timeout at most).

    When wrk stops, the requests it had in flight stay queued in a server that queues
    them (ours, Passenger) and are still run by the app after their client has gone;
    the next wrk run would otherwise start against that backlog (at django c=64 that
    overflowed Passenger's queue of 100 into hundreds of 503s)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        before = cpu_times(server)
        time.sleep(IDLE_WINDOW)
        if sum(cpu_used(before, cpu_times(server)).values()) < IDLE_SHARE * IDLE_WINDOW:
            break
    return time.perf_counter() - t0


def rotated(items: list[T], r: int) -> list[T]:
    """`items` starting at index r mod len(items)."""
    if not items:
        return []
    k = r % len(items)
    return items[k:] + items[:k]


def measure(scenario: str, server: Server, rnd: int, position: int, conns: int,
            duration: float, script: Path, path: str = "/") -> Run:
    load = os.getloadavg()[0]
    before = cpu_times(server)
    t0 = time.perf_counter()
    result = wrk.run(server.port, conns, duration, script, path=path)
    elapsed = time.perf_counter() - t0
    used = cpu_used(before, cpu_times(server))
    return Run(scenario, server.label, rnd, position, result, used, elapsed,
               server.front_name, load)


def run_rounds(scenario: str, servers: list[Server], connections: list[int], rounds: int,
               duration: float, warmup: float, script: Path) -> list[Run]:
    """`rounds` rounds; in each, for each connection count, every server in the round's
    rotated order: an unrecorded warm-up, then the measured run."""
    runs: list[Run] = []
    for rnd in range(rounds):
        order = rotated(servers, rnd)
        for conns in connections:
            for position, server in enumerate(order):
                if warmup > 0:
                    wrk.run(server.port, conns, warmup, script)  # unrecorded
                    wait_idle(server)
                run = measure(scenario, server, rnd + 1, position, conns, duration, script)
                wait_idle(server)
                runs.append(run)
                r = run.result
                front = f"  front {run.front_us:.0f} µs/req" if run.front_us else ""
                print(f"  {scenario} round {rnd + 1}/{rounds}  {server.label:<16} "
                      f"c={conns:<3} {r.rps:>9,.0f} req/s  p50 {r.p50_ms:6.2f} ms  "
                      f"p99 {r.p99_ms:6.2f} ms  errors {r.errors}{front}  "
                      f"(load {run.loadavg_before:.1f})", file=sys.stderr, flush=True)
    return runs


def load_seconds(connections: list[int], rounds: int, duration: float,
                 warmup: float) -> float:
    """Seconds of wrk load each server got from run_rounds()."""
    return rounds * len(connections) * (duration + warmup)
