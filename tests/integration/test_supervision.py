"""The seed page's "Process supervision" walk-through, and the agents' crash handling,
with real processes, real signals and real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import psutil
import pytest

from support import (
    INSTRUMENTED_APP,
    PassengerServer,
    RequestLoop,
    has_passenger_title,
    is_gone,
    running_server,
    wait_for,
)


@pytest.fixture
def two_process_server() -> Iterator[PassengerServer]:
    with running_server(INSTRUMENTED_APP, "--min-instances", "2") as server:
        wait_for(lambda: len(server.app_pids()) == 2, 10, message="two app processes")
        yield server


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_app_process_is_replaced_within_a_second(
        two_process_server: PassengerServer, sig: signal.Signals) -> None:
    server = two_process_server
    before = server.app_pids()
    victim, survivor = before
    with RequestLoop(server.port) as loop:
        time.sleep(0.2)
        os.kill(victim, sig)
        killed_at = time.monotonic()
        after = wait_for(lambda: (p := server.app_pids()) and len(p) == 2
                         and victim not in p and p, 1.0, message="a replacement process")
        replaced_in = time.monotonic() - killed_at
        time.sleep(0.2)
    print(f"{sig.name}: back to 2 processes in {replaced_in * 1000:.0f} ms")
    assert survivor in after and victim not in after
    assert is_gone(victim)
    failures = [r for r in loop.statuses() if r[0] != 200]
    served_by = {body.strip() for status, body in loop.statuses() if status == 200}
    assert f"pid={survivor}" in served_by
    # Only a request that was inside the killed process when it died may fail, and it
    # must say why.
    assert len(failures) <= 1, failures
    for status, body in failures:
        assert status == 502 and "exited" in body, (status, body)
    assert len(loop.results) > 20


def test_killed_helper_agent_is_restarted_with_fresh_processes(
        two_process_server: PassengerServer) -> None:
    server = two_process_server
    old_apps = server.app_pids()
    helper = server.agent_pid("PassengerHelperAgent")
    os.kill(helper, signal.SIGKILL)
    killed_at = time.monotonic()

    def served_by_new_process() -> bool:
        try:
            status, headers, _ = server.get("/", timeout=2)
        except OSError:
            return False
        return status == 200 and int(headers["x-pid"]) not in old_apps

    wait_for(served_by_new_process, 3.0, message="a 200 from a fresh app process")
    print(f"first 200 after helper agent kill -9: "
          f"{(time.monotonic() - killed_at) * 1000:.0f} ms")
    assert server.agent_pid("PassengerHelperAgent") != helper
    wait_for(lambda: all(is_gone(pid) for pid in old_apps), 3.0,
             message="old app processes gone")
    assert not set(server.app_pids()) & set(old_apps)


def test_ctrl_c_stops_every_process_and_removes_the_instance_directory() -> None:
    server = PassengerServer(INSTRUMENTED_APP, "--min-instances", "2").start()
    try:
        wait_for(lambda: len(server.app_pids()) == 2, 10, message="two app processes")
        instance = server.instance_dir()
        assert instance is not None and instance.exists()
        server.remember_descendants()
        started = set(server.seen_pids)
        assert len(started) == 6  # watchdog, two agents, the preloader, two app processes
        os.kill(server.watchdog_pid, signal.SIGINT)
        assert server.proc is not None
        assert server.proc.wait(5) == 0
        wait_for(lambda: all(is_gone(pid) for pid in started), 5.0,
                 message="every started process gone")
        assert not instance.exists()
    finally:
        server.stop()


def test_ps_shows_the_four_kinds_of_titles(two_process_server: PassengerServer) -> None:
    server = two_process_server
    server.remember_descendants()
    ps = subprocess.run(["ps", "-o", "pid=,args=", "-p",
                         ",".join(map(str, server.seen_pids))],
                        capture_output=True, text=True, check=True).stdout
    titles = {line.split(None, 1)[1].strip() for line in ps.splitlines()}
    app = f"Passenger WsgiApp: {INSTRUMENTED_APP}"
    preloader = f"Passenger AppPreloader: {INSTRUMENTED_APP}"
    assert {"PassengerWatchdog", "PassengerHelperAgent", "PassengerLoggingAgent", app,
            preloader} <= titles
    for pid in server.seen_pids:
        assert has_passenger_title(psutil.Process(pid))
