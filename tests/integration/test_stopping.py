"""Stopping, as README's "Stopping" promises: `passenger stop` lets a request in flight
finish (for up to --graceful-timeout seconds) and then leaves nothing running; a second
Ctrl-C does not wait for it."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import Any

from support import INSTRUMENTED_APP, PassengerServer, is_gone, wait_for


def start_busy(server: PassengerServer, path: str
               ) -> tuple[threading.Thread, list[tuple[int, bytes] | str]]:
    """GET `path` on a thread, once the server is up with its one app process; returns
    when the request is in the app. The list gets (status, body) or the error."""
    wait_for(lambda: server.app_pids(), 10, message="an app process")
    outcome: list[tuple[int, bytes] | str] = []

    def run() -> None:
        try:
            status, _, body = server.get(path, timeout=60)
            outcome.append((status, body))
        except OSError as exc:
            outcome.append(str(exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: any(p["sessions"] for g in server.status()["groups"]
                         for p in g["processes"]), 5, message="the request in the app")
    server.remember_descendants()
    return thread, outcome


def stop_while_busy(server: PassengerServer, path: str) -> tuple[
        subprocess.CompletedProcess[str], list[Any], float, set[int]]:
    """`passenger stop` while a request to `path` is in the app -> (the stop's result,
    the request's outcome, how long the stop took, the processes there were)."""
    busy, outcome = start_busy(server, path)
    started = set(server.seen_pids)
    began = time.monotonic()
    stop = server.run_tool("passenger", "stop", "--pid-file", str(server.pid_file),
                           timeout=60)
    took = time.monotonic() - began
    busy.join(10)
    return stop, outcome, took, started


def test_passenger_stop_lets_the_request_in_flight_finish() -> None:
    server = PassengerServer(INSTRUMENTED_APP, "--graceful-timeout", "20").start()
    try:
        stop, outcome, took, started = stop_while_busy(server, "/sleep?s=2")
        assert stop.returncode == 0, stop.stderr
        assert outcome and outcome[0][0] == 200, outcome
        assert 1.0 < took < 15, took  # it waited for the request (~2 s), not for 20 s
        assert server.proc is not None and server.proc.wait(5) == 0
        wait_for(lambda: all(is_gone(pid) for pid in started), 10,
                 message="every process gone")
        assert server.instance_dir() is None
    finally:
        server.stop()


def test_graceful_timeout_bounds_the_wait_for_a_request_in_flight() -> None:
    server = PassengerServer(INSTRUMENTED_APP, "--graceful-timeout", "1").start()
    try:
        stop, outcome, took, started = stop_while_busy(server, "/sleep?s=60")
        assert stop.returncode == 0, stop.stderr
        # 1 s of grace, then the app process gets SIGTERM (SIGKILL 5 s later at most).
        assert 0.9 < took < 15, took
        # The client is told, not left hanging: the process was stopped under it.
        assert outcome and outcome[0][0] == 502, outcome
        assert b"exited with signal SIGTERM" in outcome[0][1]
        wait_for(lambda: all(is_gone(pid) for pid in started), 10,
                 message="every process gone")
    finally:
        server.stop()


def test_a_second_ctrl_c_stops_at_once() -> None:
    server = PassengerServer(INSTRUMENTED_APP, "--graceful-timeout", "60").start()
    try:
        busy, _ = start_busy(server, "/sleep?s=60")
        started = set(server.seen_pids)
        pgid = os.getpgid(server.watchdog_pid)  # the terminal's foreground group
        os.killpg(pgid, signal.SIGINT)
        server.wait_for_log("Received SIGINT")
        time.sleep(0.5)
        assert server.proc is not None and server.proc.poll() is None  # still draining
        began = time.monotonic()
        os.killpg(pgid, signal.SIGINT)
        server.proc.wait(15)
        took = time.monotonic() - began
        assert took < 10, took  # not the 60 s of --graceful-timeout, nor the request's
        wait_for(lambda: all(is_gone(pid) for pid in started), 10,
                 message="every process gone")
        busy.join(10)
    finally:
        server.stop()
