"""Finding our console scripts: an explicit override first (`PASSENGER_LOGGING_AGENT_PATH`
and friends: for wrapping an agent in strace, a debugger or a fault injector), then beside
the running interpreter (a virtualenv that is not activated), then on PATH."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path


def override_variable(name: str) -> str:
    """`PassengerLoggingAgent` -> `PASSENGER_LOGGING_AGENT_PATH`."""
    return "_".join(re.findall(r"[A-Z][a-z]*", name)).upper() + "_PATH"


def find_executable(name: str) -> str:
    override = os.environ.get(override_variable(name))
    if override:
        return override
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is not installed (looked beside {sys.executable} "
                                f"and on PATH)")
    return found
