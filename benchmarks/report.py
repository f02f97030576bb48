"""Turning measurements into the one printed report (Markdown, so the README can take it
as it is) and the JSON beside it, so that runs can be compared later."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import bigbody
from benchmarks.goals import Goal, Summary, agents_mb
from benchmarks.servers import GTHREAD, GUNICORN, OURS, PASSENGER, UWSGI
from benchmarks.supervision import Timing
from benchmarks.throughput import Run

REPO = Path(__file__).resolve().parent.parent

SUPERVISION_ROWS = [
    ("kill_app_back_to_min", "kill -9 idle app process → pool back to 2"),
    ("kill_app_dropped", "kill -9 idle app process → dead one gone from the pool"),
    ("kill_front_first_200", "kill -9 helper agent (Passenger: core) → first 200"),
    ("kill_front_pool_back", "kill -9 helper agent (Passenger: core) → 2 new processes"),
    ("kill_front_failed_requests",
     "… requests failed meanwhile (count per rep; GET / every 5 ms, 1 s timeout each)"),
    ("restart_app_replaced", "restart-app → all processes replaced"),
    ("restart_app_failed_requests",
     "… requests failed meanwhile (count per rep; GET / every 5 ms, 1 s timeout each)"),
    ("start_first_200", "start → first 200"),
    ("start_all_processes", "start → both processes listed"),
    ("stop", "graceful stop (SIGTERM; Passenger: also Ctrl-C to its launcher) → all exited "
     "(Passenger: its temp-dir toucher not waited for)"),
]
COUNT_ROWS = {"kill_front_failed_requests", "restart_app_failed_requests"}

DESCRIPTIONS = {
    OURS: "ours: `passenger start APP --min-instances 2 --max-pool-size 2 "
          "--environment production` (helper agent in front of 2 app processes)",
    GUNICORN: "gunicorn sync: `gunicorn -w 2` (its default worker)",
    GTHREAD: "gunicorn gthread: `gunicorn -w 2 -k gthread --threads 4` (keep-alive)",
    UWSGI: "uWSGI: `uwsgi --http-socket --processes 2 --master --wsgi-file "
           "passenger_wsgi.py --disable-logging --die-on-term --add-header "
           "'Connection: close'` (2 processes answering HTTP themselves, no proxy hop)",
    PASSENGER: "Passenger 6 (Debian): `/usr/bin/passenger start --engine=builtin "
               "--min-instances 2 --max-pool-size 2 --environment production`",
}
# Servers whose keep-alive wrk figures need a word next to them.
CLOSERS = {
    GUNICORN: "gunicorn's sync worker closes the connection after every response "
              "(`Connection: close`), so a keep-alive wrk run mostly measures its "
              "reconnects (a new TCP connection per request)",
    UWSGI: "uWSGI's --http-socket closes the connection after every response too "
           "(keep-alive there, --http11-socket, would let 2 connections hog the 2 "
           "processes and starve the other 62 at c=64), so its figures include a "
           "reconnect per request",
}


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def commit() -> str:
    """`git rev-parse --short HEAD`, plus "+dirty" when the work tree has changes."""
    head = _run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]) or "unknown"
    dirty = _run(["git", "-C", str(REPO), "status", "--porcelain"])
    return head + ("+dirty" if dirty else "")


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
    banner = _run(["wrk", "-v"]).split(" [", 1)[0].replace("debian/", "")
    return {"nproc": os.cpu_count(), "cpu_model": model,
            "python": platform.python_version(), "python_executable": sys.executable,
            "kernel": platform.release(), "wrk": banner.strip() or "wrk ?",
            "loadavg_at_start": os.getloadavg(), "commit": commit(),
            "date": datetime.date.today().isoformat()}


def _cell(label: str) -> str:
    return label + (" †" if label in CLOSERS else "")


def _closer_notes(labels: Sequence[str]) -> list[str]:
    return [f"† {label}: {CLOSERS[label]}." for label in labels if label in CLOSERS]


# -- throughput ----------------------------------------------------------------------

def summarize(runs: Sequence[Run]) -> Summary:
    """Per scenario, server and concurrency: medians and spread over rounds."""
    grouped: dict[str, dict[str, dict[int, list[Run]]]] = {}
    for run in runs:
        grouped.setdefault(run.scenario, {}).setdefault(run.server, {}) \
            .setdefault(run.result.connections, []).append(run)
    out: Summary = {}
    for scenario, per_server in grouped.items():
        for server, per_conns in per_server.items():
            for conns, rs in per_conns.items():
                rps = [r.result.rps for r in rs]
                p99 = [r.result.p99_ms for r in rs]
                names = sorted({n for r in rs for n in r.cpu_pct})
                front = [x for r in rs if (x := r.front_us) is not None]
                apps = [x for r in rs if (x := r.apps_us) is not None]
                out.setdefault(scenario, {}).setdefault(server, {})[conns] = {
                    "rps": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps),
                    "p50_ms": statistics.median(r.result.p50_ms for r in rs),
                    "p99_ms": statistics.median(p99), "p99_min": min(p99),
                    "p99_max": max(p99),
                    "errors": sum(r.result.errors for r in rs),
                    "errors_by_kind": _error_kinds(rs),
                    "requests": sum(r.result.requests for r in rs),
                    "rps_rounds": rps, "p99_rounds": p99,
                    "cpu_pct": {n: statistics.median(r.cpu_pct.get(n, 0.0) for r in rs)
                                for n in names},
                    "front": rs[0].front,
                    "front_us": statistics.median(front) if front else None,
                    "apps_us": statistics.median(apps) if apps else None,
                }
    return out


def _error_kinds(runs: Sequence[Run]) -> dict[str, int]:
    """Non-2xx responses by status class and socket errors by kind, summed over runs."""
    kinds: dict[str, int] = {}
    for r in runs:
        for kind, n in [*r.result.non2xx_by_status.items(),
                        *r.result.socket_errors.items()]:
            if n:
                kinds[kind] = kinds.get(kind, 0) + n
    return kinds


def _errors_cell(e: dict[str, Any]) -> str:
    kinds = e.get("errors_by_kind") or {}
    if not e["errors"] or not kinds:
        return str(e["errors"])
    return f"{e['errors']} ({', '.join(f'{k}: {n}' for k, n in kinds.items())})"


def throughput_table(per_server: dict[str, dict[int, dict[str, Any]]]) -> str:
    lines = ["| server | conns | req/s median [min–max] | p50 | p99 median [min–max] | "
             "errors | req/s per round |",
             "|---|---:|---|---:|---|---:|---|"]
    conns_all = sorted({c for per in per_server.values() for c in per})
    for conns in conns_all:
        for server, per_conns in per_server.items():
            e = per_conns.get(conns)
            if e is None:
                continue
            rounds = " / ".join(f"{x:,.0f}" for x in e["rps_rounds"])
            lines.append(
                f"| {_cell(server)} | {conns} | {e['rps']:,.0f} [{e['rps_min']:,.0f}–"
                f"{e['rps_max']:,.0f}] | {e['p50_ms']:.2f} ms | {e['p99_ms']:.2f} "
                f"[{e['p99_min']:.2f}–{e['p99_max']:.2f}] ms | {_errors_cell(e)} | {rounds} |")
    return "\n".join([*lines, "", *_closer_notes(list(per_server))])


def ratio_table(per_server: dict[str, dict[int, dict[str, Any]]], ours: str) -> str:
    mine = per_server.get(ours)
    peers = [p for p in per_server if p != ours]
    if not mine or not peers:
        return "(no ratios: ours or the peers not measured)"
    conns_all = sorted(mine)
    head = "| ours ÷ peer | " + " | ".join(
        f"req/s at {c} | p99 at {c}" for c in conns_all) + " |"
    lines = [head, "|---|" + "---:|" * (2 * len(conns_all))]
    for peer in peers:
        cells = []
        for c in conns_all:
            e = per_server[peer].get(c)
            if e and e["rps"] and e["p99_ms"]:
                cells += [f"{mine[c]['rps'] / e['rps']:.2f}×",
                          f"{mine[c]['p99_ms'] / e['p99_ms']:.2f}×"]
            else:
                cells += ["–", "–"]
        lines.append(f"| {ours} ÷ {_cell(peer)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n(req/s: higher is better for us; p99: lower is better for us)"


def cpu_per_request_table(summary: Summary) -> str:
    lines = ["| scenario | conns | server | front process | front µs/request | "
             "apps µs/request | together |",
             "|---|---:|---|---|---:|---:|---:|"]
    for scenario, per_server in summary.items():
        for server, per_conns in per_server.items():
            for conns, e in sorted(per_conns.items()):
                front = e["front_us"]
                apps = e["apps_us"]
                total = (front or 0.0) + (apps or 0.0)
                lines.append(
                    f"| {scenario} | {conns} | {server} | {e['front'] or '– (apps accept)'} | "
                    f"{f'{front:.1f}' if front is not None else '–'} | "
                    f"{f'{apps:.1f}' if apps is not None else '–'} | {total:.1f} |")
    return "\n".join(lines)


def cpu_table(summary: Summary) -> str:
    lines = ["| scenario | server | conns | CPU, % of one core (median over rounds) |",
             "|---|---|---:|---|"]
    for scenario, per_server in summary.items():
        for server, per_conns in per_server.items():
            for conns, e in sorted(per_conns.items()):
                parts = ", ".join(f"{n} {pct:.0f}%" for n, pct in e["cpu_pct"].items())
                lines.append(f"| {scenario} | {server} | {conns} | {parts} |")
    return "\n".join(lines)


# -- big bodies ----------------------------------------------------------------------

def bigbody_table(results: dict[str, dict[str, bigbody.Result]], reps: int) -> str:
    servers = list(dict.fromkeys(s for per in results.values() for s in per))
    lines = ["| MB/s (10^6 B/s), median [min–max] | " + " | ".join(servers) + " |",
             "|---|" + "---|" * len(servers)]
    titles = {c.key: c.title for c in bigbody.CASES}
    for key, per in results.items():
        cells = [per[s].summary() if s in per else "–" for s in servers]
        lines.append(f"| {titles.get(key, key)} | " + " | ".join(cells) + " |")
    errors = [f"- {s} {key}: {e}" for key, per in results.items() for s, r in per.items()
              for e in r.errors]
    text = "\n".join(lines) + f"\n({reps} timed transfers each, after one unrecorded)"
    return text + ("\n\nFailed transfers:\n" + "\n".join(errors) if errors else "")


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
            if t is not None and key in COUNT_ROWS and t.values_ms:
                cell = "/".join(f"{v:.0f}" for v in t.values_ms)
            elif key == "restart_app_replaced" and t is not None and t.values_ms:
                cell += f" ({t.notes[-1]})" if t.notes else ""
            cells.append(cell)
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def startup_table(sup: dict[str, dict[str, Timing]], ours: str) -> str:
    def med(label: str) -> float | None:
        t = sup.get(label, {}).get("start_first_200")
        return statistics.median(t.values_ms) if t is not None and t.values_ms else None
    mine = med(ours)
    lines = ["| server | start → first 200, ms median [min–max] | ours ÷ server |",
             "|---|---|---:|"]
    for label in sup:
        t = sup[label].get("start_first_200")
        theirs = med(label)
        ratio = f"{mine / theirs:.2f}×" if mine is not None and theirs else "–"
        lines.append(f"| {label} | {t.summary() if t else '–'} | {ratio} |")
    return "\n".join(lines) + "\n(ratio: lower is better for us; the goal is ≤ 1.00× Passenger)"


def _mb(kb: float) -> str:
    return f"{kb / 1024:.1f} MB"


def memory_table(mem: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["| server | agents (each) | agents total | preloader | app processes (each) | "
             "apps total | not counted |",
             "|---|---|---:|---:|---|---:|---|"]
    for server, entries in mem.items():
        def pick(role: str, es: list[dict[str, Any]] = entries) -> list[dict[str, Any]]:
            return [e for e in es if e["role"] == role]
        agents, apps = pick("agent"), pick("app")
        pre = sum(e.get("private_dirty_kb", 0) for e in pick("preloader"))
        p_total = sum(e.get("private_dirty_kb", 0) for e in apps)
        each_agent = ", ".join(f"{e['name']} {_mb(e.get('private_dirty_kb', 0))}"
                               for e in agents)
        each_app = ", ".join(_mb(e.get("private_dirty_kb", 0)) for e in apps)
        other = ", ".join(f"{e['name']} {_mb(e.get('private_dirty_kb', 0))}"
                          for e in pick("launcher")) or "–"
        lines.append(f"| {server} | {each_agent} | {agents_mb(entries):.1f} MB | "
                     f"{_mb(pre) if pick('preloader') else '–'} | {each_app} | "
                     f"{_mb(p_total)} | {other} |")
    return "\n".join(lines)


# -- the whole report ----------------------------------------------------------------

def render(meta: dict[str, Any], summary: Summary, sup: dict[str, dict[str, Timing]],
           memory: dict[str, Any], big: dict[str, dict[str, bigbody.Result]],
           goal_list: list[Goal], chart_line: str, profile_text: str = "") -> str:
    m = meta["machine"]
    load = ", ".join(f"{x:.2f}" for x in m["loadavg_at_start"])
    ours = meta["ours"]
    parts = [
        f"# Benchmark {m['date']} ({meta['started_utc']} UTC), commit {m['commit']}",
        f"Machine: nproc {m['nproc']}, {m['cpu_model']}, Linux {m['kernel']} (uname -r); "
        f"Python {m['python']}, {m['wrk']}; load average at start {load}.",
        f"Command: `{meta['command']}`",
        "",
        "Servers (each 2 app processes on 127.0.0.1, same interpreter):",
        *[f"- {DESCRIPTIONS.get(label, label + ': ours at ' + label.split('@', 1)[-1])}"
          for label in meta["servers"]],
        "",
        f"Throughput: wrk -t2 -d{meta['duration']:g}s --latency at "
        f"{', '.join(str(c) for c in meta['connections'])} connections after a "
        f"{meta['warmup']:g} s unrecorded warm-up, {meta['rounds']} round(s); round r "
        "starts at server r mod n (order rotated); median [min–max] over rounds; errors = "
        "non-2xx responses + socket errors, summed.",
        "",
        "## Goals (Performance wave 2)",
        "```",
        *[g.line() for g in goal_list],
        "```",
    ]
    for scenario in ("hello", "django"):
        if scenario not in summary:
            continue
        parts += ["", f"## {scenario}: throughput and latency ({meta['apps'][scenario]})",
                  throughput_table(summary[scenario]), "",
                  ratio_table(summary[scenario], ours)]
    if summary:
        parts += ["", "## CPU per request (utime + stime from /proc/PID/stat over each run "
                  "÷ requests served; median over rounds)",
                  cpu_per_request_table(summary), "",
                  "## CPU while serving", cpu_table(summary)]
    if big:
        parts += ["", f"## Big bodies ({meta['apps']['bigbody']}, one connection, "
                  "our timed client)", bigbody_table(big, meta["bigbody_reps"]),
                  "(static: measured where the server answers APP_DIR/public itself: ours; "
                  "Passenger 6's builtin engine, gunicorn and uWSGI pass it to the app, so "
                  "compare their file_wrapper figure)"]
    if memory.get("idle"):
        parts += ["", "## Memory: private dirty (smaps_rollup, MB = MiB), hello app",
                  "Idle, before any load:", memory_table(memory["idle"])]
    if memory.get("loaded"):
        parts += ["", f"Idle again after {memory['load_s']:.0f} s of wrk load per server "
                  f"({memory['load_how']}):", memory_table(memory["loaded"])]
    if sup:
        parts += ["", f"## Supervision, no traffic ({meta['reps']} reps each)",
                  supervision_table(sup), "", "## Start-up", startup_table(sup, ours)]
    parts += ["", chart_line]
    if profile_text:
        parts += ["", profile_text]
    return "\n".join(parts) + "\n"
