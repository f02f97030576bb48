"""Suite-wide hygiene: after the whole run, no process with a Passenger title that this
run started may be left; any found are killed and the run fails."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import psutil
import pytest

from support import has_passenger_title

SESSION_START = time.time()


@pytest.fixture(scope="session", autouse=True)
def no_leftover_processes() -> Iterator[None]:
    yield
    leftovers = [p for p in psutil.process_iter(["create_time"])
                 if has_passenger_title(p) and p.info["create_time"] >= SESSION_START - 1]
    # An exiting process may still be on its way out: give it a moment.
    _, alive = psutil.wait_procs(leftovers, timeout=3)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    assert not alive, "processes left running after the suite: " + ", ".join(
        f"{p.pid} {' '.join(p.cmdline())}" for p in alive if p.is_running())
