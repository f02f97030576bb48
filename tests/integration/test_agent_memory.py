"""The watchdog and the logging agent run for the server's whole life, mostly idle: the
memory they hold is memory the apps cannot have. Each must stay a few MB above a bare
interpreter (about 3.9 MB with `re`, which every console script imports)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import passenger.common
import passenger.logging_agent
import passenger.watchdog
from support import HELLO_APP, running_server, wait_for

MB = 1024 * 1024
WATCHDOG_BOUND = 6 * MB
LOGGING_AGENT_BOUND = 5.5 * MB


def private_dirty(pid: int) -> int:
    """Bytes, as passenger-memory-stats counts them (Private_Dirty of smaps_rollup)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no Private_Dirty for {pid}")


def ensure_bytecode_caches() -> None:
    """Installed packages have their .pyc (pip writes them); an editable checkout under
    PYTHONDONTWRITEBYTECODE would not, and the agents would carry the compiler's
    leftovers (0.9 MB) instead of what we measure."""
    dirs = [str(Path(next(iter(p.__path__)))) for p in (passenger.common,
                                                       passenger.watchdog,
                                                       passenger.logging_agent)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", *dirs], env=env,
                   capture_output=True, timeout=60, check=False)


def test_watchdog_and_logging_agent_stay_small_at_idle_and_after_traffic(
        tmp_path: Path) -> None:
    """Private dirty RSS at idle: watchdog < 6 MB (measured 4.9 MB; 12.9 MB when it ran
    on asyncio with `logging`, dataclasses and subprocess), logging agent < 5.5 MB
    (measured 4.3 MB; 8.1 MB with `logging`, dataclasses and `secrets`). The same
    bounds hold after a burst of requests, each logged twice (app output, access log)."""
    ensure_bytecode_caches()
    with running_server(HELLO_APP, "--access-log", str(tmp_path / "access.log")) as server:
        logging_agent = server.agent_pid("PassengerLoggingAgent")
        time.sleep(1.0)  # idle: start-up done, the first flush behind us
        idle = {"watchdog": private_dirty(server.watchdog_pid),
                "logging agent": private_dirty(logging_agent)}
        deadline = time.monotonic() + 3
        requests = 0
        while time.monotonic() < deadline:
            assert server.get("/", timeout=5)[0] == 200
            requests += 1
        wait_for(lambda: (tmp_path / "access.log").read_text().count("\n") >= requests,
                 10, message="every request in the access log")
        busy = {"watchdog": private_dirty(server.watchdog_pid),
                "logging agent": private_dirty(logging_agent)}
    print("private dirty at idle:", {k: f"{v / MB:.1f} MB" for k, v in idle.items()},
          f"after {requests} requests:", {k: f"{v / MB:.1f} MB" for k, v in busy.items()})
    for figures in (idle, busy):
        assert figures["watchdog"] < WATCHDOG_BOUND, figures
        assert figures["logging agent"] < LOGGING_AGENT_BOUND, figures
