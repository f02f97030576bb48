"""Turning measurements into the one printed report (Markdown tables, so the README can
take them as they are) and the JSON beside it, so that runs can be compared later."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from benchmarks.supervision import Timing
from benchmarks.throughput import Run

SUPERVISION_ROWS = [
    ("kill_app_back_to_min", "kill -9 idle app process → pool back to 2"),
    ("kill_app_dropped", "kill -9 idle app process → dead one gone from the pool"),
    ("kill_front_first_200", "kill -9 helper agent (Passenger: core) → first 200"),
    ("kill_front_pool_back", "kill -9 helper agent (Passenger: core) → 2 new processes"),
    ("kill_front_failed_requests", "… requests failed meanwhile (count, not ms)"),
    ("start_first_200", "start → first 200"),
    ("start_all_processes", "start → both processes listed"),
    ("stop", "graceful stop (SIGTERM; Passenger: also Ctrl-C to its launcher) → all exited"),
    ("restart_app_replaced", "restart-app → all processes replaced"),
]


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    banner = subprocess.run(["wrk", "-v"], capture_output=True, text=True,
                            check=False).stdout.split(" [", 1)[0].replace("debian/", "")
    return {"nproc": os.cpu_count(), "cpu_model": model,
            "python": platform.python_version(), "python_executable": sys.executable,
            "kernel": platform.release(), "wrk": banner.strip() or "wrk ?",
            "loadavg_at_start": os.getloadavg()}


# -- throughput ----------------------------------------------------------------------

def summarize(runs: Sequence[Run]) -> dict[str, dict[int, dict[str, Any]]]:
    """Per server and concurrency: medians over rounds, errors summed."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for run in runs:
        out.setdefault(run.server, {}).setdefault(run.result.connections, {"runs": []})
        out[run.server][run.result.connections]["runs"].append(run)
    for per_conns in out.values():
        for entry in per_conns.values():
            rs: list[Run] = entry.pop("runs")
            entry["rps"] = statistics.median(r.result.rps for r in rs)
            entry["p50_ms"] = statistics.median(r.result.p50_ms for r in rs)
            entry["p99_ms"] = statistics.median(r.result.p99_ms for r in rs)
            entry["errors"] = sum(r.result.errors for r in rs)
            entry["requests"] = sum(r.result.requests for r in rs)
            entry["rps_rounds"] = [r.result.rps for r in rs]
            entry["p99_rounds"] = [r.result.p99_ms for r in rs]
            names = {n for r in rs for n in r.cpu_pct}
            entry["cpu_pct"] = {n: statistics.median(r.cpu_pct.get(n, 0.0) for r in rs)
                                for n in sorted(names)}
    return out


def ratios(summary: dict[str, dict[int, dict[str, Any]]],
           ours: str) -> dict[str, dict[int, dict[str, float]]]:
    out: dict[str, dict[int, dict[str, float]]] = {}
    for peer, per_conns in summary.items():
        if peer == ours:
            continue
        for conns, entry in per_conns.items():
            mine = summary[ours].get(conns)
            if mine and entry["rps"] and entry["p99_ms"]:
                out.setdefault(peer, {})[conns] = {
                    "rps": mine["rps"] / entry["rps"], "p99": mine["p99_ms"] / entry["p99_ms"]}
    return out


def throughput_table(summary: dict[str, dict[int, dict[str, Any]]]) -> str:
    lines = ["| server | conns | req/s | p50 | p99 | errors | req/s per round | p99 per round |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    conns_all = sorted({c for per in summary.values() for c in per})
    for conns in conns_all:
        for server, per_conns in summary.items():
            e = per_conns.get(conns)
            if e is None:
                continue
            rounds = " / ".join(f"{x:,.0f}" for x in e["rps_rounds"])
            p99s = " / ".join(f"{x:.2f}" for x in e["p99_rounds"])
            lines.append(f"| {server} | {conns} | {e['rps']:,.0f} | {e['p50_ms']:.2f} ms | "
                         f"{e['p99_ms']:.2f} ms | {e['errors']} | {rounds} | {p99s} |")
    return "\n".join(lines)


def ratio_table(rat: dict[str, dict[int, dict[str, float]]], ours: str) -> str:
    if not rat:
        return "(no peers measured)"
    conns_all = sorted({c for per in rat.values() for c in per})
    head = "| ours ÷ peer | " + " | ".join(
        f"req/s at {c} | p99 at {c}" for c in conns_all) + " |"
    lines = [head, "|---|" + "---:|" * (2 * len(conns_all))]
    for peer, per in rat.items():
        cells = []
        for c in conns_all:
            r = per.get(c)
            cells += [f"{r['rps']:.2f}×", f"{r['p99']:.2f}×"] if r else ["–", "–"]
        lines.append(f"| {ours} ÷ {peer} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n(req/s: higher is better for us; p99: lower is better for us)"


def cpu_table(summary: dict[str, dict[int, dict[str, Any]]]) -> str:
    lines = ["| server | conns | CPU, % of one core (median over rounds) |", "|---|---:|---|"]
    for server, per_conns in summary.items():
        for conns, e in sorted(per_conns.items()):
            parts = ", ".join(f"{n} {pct:.0f}%" for n, pct in e["cpu_pct"].items())
            lines.append(f"| {server} | {conns} | {parts} |")
    return "\n".join(lines)


# -- supervision and memory ----------------------------------------------------------

def supervision_table(sup: dict[str, dict[str, Timing]]) -> str:
    labels = list(sup)
    lines = ["| ms, median [min–max] | " + " | ".join(labels) + " |",
             "|---|" + "---|" * len(labels)]
    for key, title in SUPERVISION_ROWS:
        if not any(key in sup[label] for label in labels):
            continue
        cells = []
        for label in labels:
            t = sup[label].get(key)
            cell = "–" if t is None else t.summary()
            if t is not None and key == "kill_front_failed_requests" and t.values_ms:
                cell = "/".join(f"{v:.0f}" for v in t.values_ms)
            elif key == "restart_app_replaced" and t is not None and t.values_ms:
                cell += f" ({t.notes[-1]})" if t.notes else ""
            cells.append(cell)
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mb(kb: float) -> str:
    return f"{kb / 1024:.1f} MB"


def memory_table(mem: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["| server | agents / front (each) | agents total | app processes (each) | "
             "apps total | all | not counted |",
             "|---|---|---:|---|---:|---:|---|"]
    for server, entries in mem.items():
        agents = [e for e in entries if e["role"] == "agent"]
        apps = [e for e in entries if e["role"] == "app"]
        others = [e for e in entries if e["role"] == "launcher"]
        a_total = sum(e.get("private_dirty_kb", 0) for e in agents)
        p_total = sum(e.get("private_dirty_kb", 0) for e in apps)
        each_agent = ", ".join(f"{e['name']} {_mb(e.get('private_dirty_kb', 0))}"
                               for e in agents)
        each_app = ", ".join(_mb(e.get("private_dirty_kb", 0)) for e in apps)
        other = ", ".join(f"{e['name']} {_mb(e.get('private_dirty_kb', 0))}"
                          for e in others) or "–"
        lines.append(f"| {server} | {each_agent} | {_mb(a_total)} | {each_app} | "
                     f"{_mb(p_total)} | {_mb(a_total + p_total)} | {other} |")
    return "\n".join(lines)


# -- goals (issue 3, "what it must show") -------------------------------------------

def goals(summary: dict[str, dict[int, dict[str, Any]]],
          rat: dict[str, dict[int, dict[str, float]]], sup: dict[str, dict[str, Timing]],
          ours: str, passenger: str | None, gunicorn: str | None) -> list[str]:
    out = []

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    conns_all = sorted(summary.get(ours, {}))
    if passenger and passenger in rat:
        r = rat[passenger]
        vals = [r[c]["rps"] for c in conns_all if c in r]
        out.append(f"{verdict(all(v >= 1.0 for v in vals))}  req/s ≥ 1.0× Passenger at "
                   + ", ".join(f"{c} conns ({r[c]['rps']:.2f}×)" for c in conns_all if c in r))
        p99 = [r[c]["p99"] for c in conns_all if c in r]
        out.append(f"{verdict(all(v <= 1.0 for v in p99))}  p99 ≤ Passenger's at "
                   + ", ".join(f"{c} conns ({summary[ours][c]['p99_ms']:.2f} vs "
                               f"{summary[passenger][c]['p99_ms']:.2f} ms)"
                               for c in conns_all if c in r))
    else:
        out.append("----  req/s and p99 vs Passenger: not measured (add --with-passenger)")
    if gunicorn and gunicorn in rat:
        r = rat[gunicorn]
        vals = [r[c]["rps"] for c in conns_all if c in r]
        out.append(f"{verdict(all(v >= 1.2 for v in vals))}  req/s ≥ 1.2× gunicorn sync at "
                   + ", ".join(f"{c} conns ({r[c]['rps']:.2f}×)" for c in conns_all if c in r))
    kill = sup.get(ours, {}).get("kill_app_back_to_min")
    if kill is not None and kill.values_ms:
        med = statistics.median(kill.values_ms)
        out.append(f"{verdict(med <= 300)}  kill -9 of an idle app process → back to "
                   f"min-instances in ≤ 300 ms median ({med:.0f} ms)")
    return out


def render(meta: dict[str, Any], summary: dict[str, dict[int, dict[str, Any]]],
           rat: dict[str, dict[int, dict[str, float]]], sup: dict[str, dict[str, Timing]],
           mem: dict[str, list[dict[str, Any]]], goal_lines: list[str],
           profile_text: str = "") -> str:
    m = meta["machine"]
    load = ", ".join(f"{x:.2f}" for x in m["loadavg_at_start"])
    parts = [
        f"# Benchmark {meta['started_utc']} UTC",
        f"Machine: {m['nproc']} × {m['cpu_model']} (nproc {m['nproc']}), Linux "
        f"{m['kernel']}, Python {m['python']}, {m['wrk']}; load average at start {load}.",
        f"Command: `{meta['command']}`",
        f"Each server: 2 processes of the hello app on 127.0.0.1; wrk -t2 -d{meta['duration']:g}s "
        f"at {', '.join(str(c) for c in meta['connections'])} connections after a "
        f"{meta['warmup']:g} s warm-up; servers alternated "
        f"({' '.join(meta['servers'])}) × {meta['rounds']} rounds; values are medians over "
        "rounds; errors = non-2xx responses + socket errors, summed.",
        "",
        "## Throughput and latency",
        throughput_table(summary),
        "",
        ratio_table(rat, meta["ours"]),
        "",
        "## CPU while serving",
        cpu_table(summary),
        "",
        f"## Supervision, no traffic ({meta['reps']} reps each)",
        supervision_table(sup),
        "",
        "## Memory: private dirty RSS (smaps_rollup), idle, right after the load runs",
        memory_table(mem),
        "",
        "## Goals (issue 3)",
        *goal_lines,
    ]
    if profile_text:
        parts += ["", profile_text]
    return "\n".join(parts) + "\n"
