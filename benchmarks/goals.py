"""The goals of "Performance wave 2", each checked against one run's figures: the
measured figure, the goal, PASS or MISS, and the ratio that decides it (`----` when a
figure is missing, e.g. Passenger was not run).

Ratios are ours ÷ the peer's figure from the same run (medians over rounds / reps).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from benchmarks.bigbody import Result
from benchmarks.servers import GTHREAD, GUNICORN, OURS, PASSENGER, UWSGI
from benchmarks.supervision import Timing

# scenario -> server -> connections -> summary entry (report.summarize)
Summary = dict[str, dict[str, dict[int, dict[str, Any]]]]

FRONT_CPU_CONNECTIONS = 64
FRONT_CPU_US = 40.0
AGENTS_IDLE_MB = 20.0
AGENTS_LOADED_MB = 24.0
BYTES_MB_S = 1000.0


@dataclass
class Goal:
    area: str
    goal: str                 # e.g. "req/s ≥ 2.0× Passenger's at c=8"
    measured: str = ""        # e.g. "13,500 vs 5,400 req/s"
    ratio: float | None = None
    ok: bool | None = None    # None: not measured

    @property
    def verdict(self) -> str:
        return "----" if self.ok is None else ("PASS" if self.ok else "MISS")

    def line(self) -> str:
        if self.ok is None:
            return f"{self.verdict}  {self.area}: {self.goal} — not measured ({self.measured})"
        ratio = f" = {self.ratio:.2f}×" if self.ratio is not None else ""
        return f"{self.verdict}  {self.area}: {self.goal} — {self.measured}{ratio}"

    def to_json(self) -> dict[str, Any]:
        return {"area": self.area, "goal": self.goal, "measured": self.measured,
                "ratio": self.ratio, "verdict": self.verdict}


@dataclass
class Figures:
    throughput: Summary
    bigbody: dict[str, dict[str, Result]]
    memory: dict[str, dict[str, list[dict[str, Any]]]]   # "idle"/"loaded" -> server -> …
    supervision: dict[str, dict[str, Timing]]
    ours: str = OURS


def _ratio_goal(area: str, goal: str, mine: float | None, theirs: float | None,
                factor: float, higher_is_better: bool, unit: str, fmt: str,
                peer: str) -> Goal:
    """ours vs factor × theirs; the ratio shown is mine / theirs."""
    g = Goal(area, goal)
    if mine is None or theirs is None or theirs <= 0:
        g.measured = f"no figure for {'ours' if mine is None else peer}"
        return g
    g.ratio = mine / theirs
    g.ok = g.ratio >= factor if higher_is_better else g.ratio <= factor
    g.measured = f"{mine:{fmt}} vs {theirs:{fmt}} {unit}"
    return g


def _entry(f: Figures, scenario: str, server: str, conns: int) -> dict[str, Any] | None:
    return f.throughput.get(scenario, {}).get(server, {}).get(conns)


def _value(f: Figures, scenario: str, server: str, conns: int, key: str) -> float | None:
    e = _entry(f, scenario, server, conns)
    return None if e is None or e.get(key) is None else float(e[key])


def throughput_goals(f: Figures, scenario: str, connections: list[int],
                     rps_vs_passenger: dict[int, float], rps_vs_uwsgi: float,
                     p99_vs_passenger: float) -> list[Goal]:
    out = []
    for c in connections:
        factor = rps_vs_passenger.get(c)
        if factor is not None:
            out.append(_ratio_goal(
                scenario, f"req/s ≥ {factor:.2f}× Passenger's at c={c}",
                _value(f, scenario, f.ours, c, "rps"),
                _value(f, scenario, PASSENGER, c, "rps"), factor, True, "req/s", ",.0f",
                PASSENGER))
    for c in connections:
        out.append(_ratio_goal(
            scenario, f"req/s ≥ {rps_vs_uwsgi:.2f}× uWSGI's at c={c}",
            _value(f, scenario, f.ours, c, "rps"), _value(f, scenario, UWSGI, c, "rps"),
            rps_vs_uwsgi, True, "req/s", ",.0f", UWSGI))
    for c in connections:
        out.append(_ratio_goal(
            scenario, f"p99 ≤ {p99_vs_passenger:.2f}× Passenger's at c={c}",
            _value(f, scenario, f.ours, c, "p99_ms"),
            _value(f, scenario, PASSENGER, c, "p99_ms"), p99_vs_passenger, False, "ms",
            ".2f", PASSENGER))
    return out


def front_cpu_goal(f: Figures) -> Goal:
    c = FRONT_CPU_CONNECTIONS
    g = Goal("front-end CPU", f"ours ≤ {FRONT_CPU_US:.0f} µs per request "
             f"(helper agent, hello c={c})")
    mine = _value(f, "hello", f.ours, c, "front_us")
    theirs = _value(f, "hello", PASSENGER, c, "front_us")
    if mine is None:
        g.measured = "no hello c=64 run of ours"
        return g
    g.ratio = mine / FRONT_CPU_US
    g.ok = mine <= FRONT_CPU_US
    beside = f"Passenger core {theirs:.1f} µs" if theirs is not None else "Passenger not run"
    g.measured = f"{mine:.1f} µs ({beside}) vs goal {FRONT_CPU_US:.0f} µs"
    return g


def _best(results: dict[str, Result], labels: tuple[str, ...]) -> tuple[str, float] | None:
    found: list[tuple[str, float]] = []
    for label in labels:
        value = results[label].median if label in results else None
        if value is not None:
            found.append((label, value))
    return max(found, key=lambda x: x[1]) if found else None


def bigbody_goals(f: Figures) -> list[Goal]:
    out = []
    b = f.bigbody
    gunicorns = (GUNICORN, GTHREAD)

    def mine(case: str) -> float | None:
        r = b.get(case, {}).get(f.ours)
        return r.median if r is not None else None

    g = Goal("32 MiB response", f"ours ≥ {BYTES_MB_S / 1000:g} GB/s")
    m = mine("bytes")
    if m is None:
        g.measured = "no figure for ours"
    else:
        g.ratio, g.ok, g.measured = m / BYTES_MB_S, m >= BYTES_MB_S, \
            f"{m:,.0f} MB/s vs {BYTES_MB_S:,.0f} MB/s"
    out.append(g)
    for case, area, basis, factor in (
            ("bytes", "32 MiB response", "bytes", 0.7),
            ("file_wrapper", "100 MiB file_wrapper", "file_wrapper", 0.9),
            ("static", "100 MiB static (public/)", "file_wrapper", 0.9),
            ("upload", "100 MiB upload", "upload", 1.0)):
        best = _best(b.get(basis, {}), gunicorns)
        what = "gunicorn's" + (" file_wrapper" if basis != case else "")
        goal = f"ours ≥ {factor:.1f}× {what} (best of sync/gthread)"
        if best is None:
            out.append(_ratio_goal(area, goal, mine(case), None, factor, True, "MB/s", ",.0f",
                                   "gunicorn"))
        else:
            label, value = best
            g = _ratio_goal(area, goal, mine(case), value, factor, True, "MB/s", ",.0f",
                            label)
            if g.ok is not None:
                g.measured += f" ({label})"
            out.append(g)
    return out


def memory_goals(f: Figures) -> list[Goal]:
    out = []
    for phase, limit, when in (("idle", AGENTS_IDLE_MB, "idle before load"),
                               ("loaded", AGENTS_LOADED_MB, "after ~1 min of load")):
        g = Goal("memory", f"our agents (watchdog + helper agent + logging agent) ≤ "
                 f"{limit:g} MB private dirty, {when}")
        entries = f.memory.get(phase, {})
        if f.ours not in entries:
            g.measured = "not read"
            out.append(g)
            continue
        mb = agents_mb(entries[f.ours])
        g.ratio, g.ok = mb / limit, mb <= limit
        beside = (f"Passenger's watchdog + core + temp-dir toucher "
                  f"{agents_mb(entries[PASSENGER]):.1f} MB" if PASSENGER in entries
                  else "Passenger not run")
        g.measured = f"{mb:.1f} MB ({beside}) vs goal {limit:g} MB"
        out.append(g)
    return out


def agents_mb(entries: list[dict[str, Any]]) -> float:
    """Private dirty of the agents in MB (MiB: kB / 1024)."""
    return sum(e.get("private_dirty_kb", 0) for e in entries if e["role"] == "agent") / 1024


def startup_goal(f: Figures) -> Goal:
    def median(label: str) -> float | None:
        t = f.supervision.get(label, {}).get("start_first_200")
        return statistics.median(t.values_ms) if t is not None and t.values_ms else None
    return _ratio_goal("start-up", "start → first 200 ≤ Passenger's (ratio ≤ 1.00×)",
                       median(f.ours), median(PASSENGER), 1.0, False, "ms", ",.0f",
                       PASSENGER)


def _unless(ran: bool, why: str, goals: list[Goal]) -> list[Goal]:
    """`goals`, each saying `why` instead of a figure when its part did not run."""
    if not ran:
        for g in goals:
            g.measured, g.ratio, g.ok = why, None, None
    return goals


def evaluate(f: Figures, connections: list[int]) -> list[Goal]:
    hello, django = "hello" in f.throughput, "django" in f.throughput
    return [
        *_unless(hello, "hello not run", throughput_goals(
            f, "hello", connections, {8: 2.0, 64: 2.5}, 0.7, 0.5)),
        *_unless(hello, "hello not run", [front_cpu_goal(f)]),
        *_unless(django, "django not run", throughput_goals(
            f, "django", connections, dict.fromkeys(connections, 1.15), 1.0, 1.0)),
        *_unless(bool(f.bigbody), "bigbody not run", bigbody_goals(f)),
        *_unless(bool(f.memory), "memory not read (--skip-memory?)", memory_goals(f)),
        *_unless(bool(f.supervision), "start-up not timed (--skip-supervision)",
                 [startup_goal(f)]),
    ]
