"""Counters for Prometheus (`--metrics-address`): requests by status class and their
durations, per app and for requests no app took; spawns and replacements per app.
Counting is on the request path, so it is a few additions per request. Their text
exposition is `metrics_exposition`.
"""

from __future__ import annotations

import bisect
import collections

# Request durations, seconds: Prometheus's client defaults, which fit web requests.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
REPLACEMENT_REASONS = ("crash", "max_requests", "memory_limit", "max_request_time")


class RequestMetrics:
    """Requests by status class, and their durations."""

    __slots__ = ("by_class", "count", "durations", "total_seconds")

    def __init__(self) -> None:
        self.by_class = [0] * 5
        self.durations = [0] * (len(BUCKETS) + 1)  # the last: above every bound
        self.count = 0
        self.total_seconds = 0.0

    def record(self, status: int, seconds: float) -> None:
        if 100 <= status < 600:
            self.by_class[status // 100 - 1] += 1
        self.durations[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.count += 1
        self.total_seconds += seconds


class AppMetrics(RequestMetrics):
    """All of the above for one app, plus its spawns and replacements."""

    __slots__ = ("replaced", "spawn_failures", "spawns")

    def __init__(self) -> None:
        super().__init__()
        self.spawns = 0
        self.spawn_failures = 0
        self.replaced: collections.Counter[str] = collections.Counter()
