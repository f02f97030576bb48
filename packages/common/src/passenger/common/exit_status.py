"""How a process ended, in words for the log: `exit status 1`, `signal SIGKILL`."""

from __future__ import annotations

import signal


def describe_exit(returncode: int) -> str:
    """`returncode` as subprocess reports it: negative for a signal."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"
