"""Passenger's restart files: `tmp/restart.txt` restarts the app when its mtime changes,
`tmp/always_restart.txt` before every request while it exists. Both are looked at no
more often than --stat-throttle-rate, so the request path pays one clock read."""

from __future__ import annotations

import os
import time


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


class RestartFiles:
    def __init__(self, app_root: str, restart_dir: str, throttle_seconds: float) -> None:
        directory = os.path.join(app_root, restart_dir)
        self.restart_file = os.path.join(directory, "restart.txt")
        self.always_restart_file = os.path.join(directory, "always_restart.txt")
        self.throttle = throttle_seconds
        self.mtime = _mtime(self.restart_file)
        self.next_check = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self.next_check

    def check(self) -> str | None:
        """-> why the app must restart now, or None."""
        self.next_check = time.monotonic() + self.throttle
        mtime = _mtime(self.restart_file)
        if mtime != self.mtime:
            self.mtime = mtime
            if mtime is not None:
                return f"{self.restart_file} changed"
        if os.path.exists(self.always_restart_file):
            return f"{self.always_restart_file} exists"
        return None
