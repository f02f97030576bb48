"""Suite-wide hygiene: after the whole run, no process with a Passenger title that this
run started may be left; any found are killed and the run fails.

"This run started" = it carries this session's PASSENGER_TEST_SESSION marker in its
environment (every process a test starts inherits it), so parallel runs on the same
machine do not count.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import psutil
import pytest

from support import has_passenger_title

SESSION_MARKER = uuid.uuid4().hex
os.environ["PASSENGER_TEST_SESSION"] = SESSION_MARKER


def started_by_this_session(proc: psutil.Process) -> bool:
    try:
        return proc.environ().get("PASSENGER_TEST_SESSION") == SESSION_MARKER
    except psutil.Error:
        return False


def describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {' '.join(proc.cmdline())}"
    except psutil.Error:
        return f"{proc.pid} (exited)"


@pytest.fixture(scope="session", autouse=True)
def no_leftover_processes() -> Iterator[None]:
    yield
    leftovers = [p for p in psutil.process_iter()
                 if has_passenger_title(p) and started_by_this_session(p)]
    # An exiting process may still be on its way out: give it a moment.
    _, alive = psutil.wait_procs(leftovers, timeout=3)
    alive = [p for p in alive if has_passenger_title(p)]
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    assert not alive, "processes left running after the suite: " + ", ".join(
        map(describe, alive))
