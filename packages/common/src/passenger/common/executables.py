"""Finding our console scripts: an explicit override first (`PASSENGER_LOGGING_AGENT_PATH`
and friends: for wrapping an agent in strace, a debugger or a fault injector), then beside
the running interpreter (a virtualenv that is not activated), then on PATH.

Plain `os.path` (no pathlib, shutil or re): the watchdog imports this and stays small."""

from __future__ import annotations

import os
import sys


def override_variable(name: str) -> str:
    """`PassengerLoggingAgent` -> `PASSENGER_LOGGING_AGENT_PATH`."""
    words = "".join(f"_{c}" if c.isupper() else c for c in name).lstrip("_")
    return words.upper() + "_PATH"


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_executable(name: str) -> str:
    override = os.environ.get(override_variable(name))
    if override:
        return override
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(beside):
        return beside
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if _is_executable(candidate):
            return candidate
    raise FileNotFoundError(f"{name} is not installed (looked beside {sys.executable} "
                            f"and on PATH)")
