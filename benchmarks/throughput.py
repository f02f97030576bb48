"""The throughput part: wrk against every server, alternated A B A B so that a slow
moment of a shared machine hits all of them alike, plus where the CPU and memory went.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import procs, wrk
from benchmarks.servers import Server


@dataclass
class Run:
    server: str
    round: int
    result: wrk.WrkResult
    cpu_pct: dict[str, float]   # % of one core, per process name ("apps" summed)
    loadavg_before: float

    def to_json(self) -> dict[str, Any]:
        return {"server": self.server, "round": self.round, **self.result.to_json(),
                "cpu_pct_of_one_core": self.cpu_pct, "loadavg_1m_before": self.loadavg_before}


def cpu_times(server: Server) -> dict[int, tuple[str, float]]:
    out = {}
    for p in server.processes():
        if p.role == "launcher":
            continue
        seconds = procs.cpu_seconds(p.pid)
        if seconds is not None:
            out[p.pid] = ("apps" if p.role == "app" else p.name, seconds)
    return out


def cpu_split(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
              elapsed: float) -> dict[str, float]:
    """% of one core each process name used between two readings (apps summed)."""
    split: dict[str, float] = {}
    for pid, (name, end) in after.items():
        start = before.get(pid, (name, 0.0))[1]
        split[name] = split.get(name, 0.0) + (end - start)
    return {name: round(100 * s / elapsed, 1) for name, s in split.items()}


def memory(server: Server) -> list[dict[str, Any]]:
    """Private dirty RSS etc. of each process of `server` (launchers marked as such)."""
    return [{"role": p.role, "name": p.name, "pid": p.pid, **procs.memory_kb(p.pid)}
            for p in server.processes()]


def run_rounds(servers: list[Server], connections: list[int], rounds: int,
               duration: float, warmup: float, script: Path) -> list[Run]:
    runs: list[Run] = []
    for rnd in range(1, rounds + 1):
        for conns in connections:
            for server in servers:
                if warmup > 0:
                    wrk.run(server.port, conns, warmup, script)  # unrecorded
                load = os.getloadavg()[0]
                before = cpu_times(server)
                t0 = time.perf_counter()
                result = wrk.run(server.port, conns, duration, script)
                elapsed = time.perf_counter() - t0
                split = cpu_split(before, cpu_times(server), elapsed)
                runs.append(Run(server.label, rnd, result, split, load))
                print(f"  round {rnd}/{rounds}  {server.label:<14} c={conns:<3} "
                      f"{result.rps:>9,.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
                      f"p99 {result.p99_ms:6.2f} ms  errors {result.errors}  "
                      f"(load {load:.1f})", file=sys.stderr, flush=True)
    return runs
