"""The Prometheus text exposition of the counters (`metrics`) and the pool's gauges.

Written by hand, not with prometheus_client: the format is a few lines of text, and
importing prometheus_client costs the helper agent memory for nothing we use (measured in
README).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from passenger.helper_agent.metrics import (
    BUCKETS,
    REPLACEMENT_REASONS,
    STATUS_CLASSES,
    RequestMetrics,
)

if TYPE_CHECKING:
    from passenger.helper_agent.front_end import FrontEnd
    from passenger.helper_agent.pool import Pool


def _labels(**labels: object) -> str:
    inside = ",".join(f'{key}="{_escape(str(value))}"' for key, value in labels.items())
    return "{" + inside + "}" if inside else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Exposition:
    """Prometheus text format 0.0.4: HELP and TYPE once per family, then its samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[str, dict[str, object], float]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in samples:
            number = repr(float(value)) if isinstance(value, float) else str(value)
            self.lines.append(f"{name}{suffix}{_labels(**labels)} {number}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _histogram(app: str, metrics: RequestMetrics) -> Iterable[tuple[str, dict[str, object],
                                                                     float]]:
    cumulative = 0
    for bound, count in zip((*BUCKETS, "+Inf"), metrics.durations, strict=True):
        cumulative += count
        yield "_bucket", {"app": app, "le": bound}, cumulative
    yield "_sum", {"app": app}, metrics.total_seconds
    yield "_count", {"app": app}, metrics.count


def render(pool: Pool, front: FrontEnd) -> str:
    """Everything, per app where it applies; requests no app took count as app=""."""
    out = Exposition()
    groups = pool.groups
    apps: list[tuple[str, RequestMetrics]] = [(g.name, g.metrics) for g in groups]
    apps.append(("", front.unrouted))
    out.family("passenger_processes", "gauge", "App processes by state.", (
        ("", {"app": g.name, "state": state},
         sum(1 for p in g.processes if p.state.value == state))
        for g in groups for state in ("spawning", "enabled", "shutting_down")))
    out.family("passenger_queue_length", "gauge", "Requests waiting for a process.", (
        ("", {"app": g.name}, len(g.queue)) for g in groups))
    out.family("passenger_top_level_queue_length", "gauge",
               "Apps waiting for room in the pool.", [("", {}, len(pool.waiting))])
    out.family("passenger_requests_total", "counter", "Requests answered, by status class.", (
        ("", {"app": name, "status_class": cls}, m.by_class[i])
        for name, m in apps for i, cls in enumerate(STATUS_CLASSES)))
    out.family("passenger_request_duration_seconds", "histogram",
               "From the request's head to the end of its response.",
               (sample for name, m in apps for sample in _histogram(name, m)))
    out.family("passenger_spawns_total", "counter", "App processes spawned.", (
        ("", {"app": g.name}, g.metrics.spawns) for g in groups))
    out.family("passenger_spawn_failures_total", "counter", "Spawns that failed.", (
        ("", {"app": g.name}, g.metrics.spawn_failures) for g in groups))
    out.family("passenger_processes_replaced_total", "counter",
               "App processes replaced, by reason.", (
                   ("", {"app": g.name, "reason": reason}, g.metrics.replaced[reason])
                   for g in groups for reason in REPLACEMENT_REASONS))
    memory = [("", {"app": g.name, "pid": p.pid}, kb * 1024) for g in groups
              for p in g.processes if (kb := pool.private_dirty_kb(p.pid)) is not None]
    out.family("passenger_process_private_dirty_bytes", "gauge",
               "Private dirty RSS of each app process (Passenger's memory figure).", memory)
    out.family("passenger_log_lines_dropped_total", "counter",
               "Log lines dropped while a logging pipe was full, by writer.", (
                   ("", {"writer": writer}, n)
                   for writer, n in pool.log_lines_dropped().items()))
    out.family("passenger_client_connections", "gauge", "Open client connections.",
               [("", {}, len(front.connections))])
    return out.text()
