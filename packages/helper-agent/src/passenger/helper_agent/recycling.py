"""--max-requests with --max-requests-jitter: each process of an app gets its own limit,
so that processes do not all recycle at the same moment."""

from __future__ import annotations

import random


class RequestLimits:
    def __init__(self, max_requests: int, jitter: int) -> None:
        self.choices = [max_requests + j for j in range(jitter + 1)] if max_requests else []
        self.used: set[int] = set()

    def choose(self, live: set[int]) -> int:
        """A limit that no live process has and, while any are left, that no earlier
        process had; 0 when --max-requests is off."""
        if not self.choices:
            return 0
        fresh = [c for c in self.choices if c not in live and c not in self.used]
        if not fresh:
            self.used.clear()
            fresh = [c for c in self.choices if c not in live] or self.choices
        limit = random.choice(fresh)
        self.used.add(limit)
        return limit
