"""Supervision that survives anything, and a logging agent that loses nothing: chaos
with real processes and real signals."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from support import (
    BIN,
    INSTRUMENTED_APP,
    PassengerServer,
    RequestLoop,
    is_gone,
    running_server,
    wait_for,
)


def access_ids(*paths: Path) -> Counter[int]:
    ids: Counter[int] = Counter()
    for path in paths:
        if path.exists():
            ids.update(int(m) for m in re.findall(r'"GET /print\?line=req-(\d+) ',
                                                  path.read_text()))
    return ids


def test_logging_agent_killed_five_times_loses_and_duplicates_nothing() -> None:
    server = PassengerServer(INSTRUMENTED_APP, "--min-instances", "2")
    access_log = server.registry / "access.log"
    server.args += ["--access-log", str(access_log)]
    server.start()
    try:
        kills = []
        with RequestLoop(server.port, limit=3000, path=lambda i: f"/print?line=req-{i}",
                         pause=0.002) as loop:
            for _ in range(5):
                time.sleep(0.3)
                pid = server.agent_pid("PassengerLoggingAgent")
                os.kill(pid, signal.SIGKILL)
                kills.append(pid)
                wait_for(lambda p=pid: server.find_agent_pid("PassengerLoggingAgent")
                         not in (p, None), 5, message="a new logging agent")
            time.sleep(0.3)
        answered = {i for i, status, _ in loop.results if status == 200}
        assert len(answered) > 200 and len(set(kills)) == 5
        assert len(answered) == len(loop.results)  # the app kept serving throughout

        def all_logged() -> bool:
            return set(access_ids(access_log)) >= answered
        wait_for(all_logged, 10, message="every answered request in the access log")
        counts = access_ids(access_log)
        assert set(counts) == answered
        assert max(counts.values()) == 1, "duplicated access log lines"
        def printed() -> set[int]:
            return {int(m) for m in re.findall(r"App \d+ output: req-(\d+)$", server.log(),
                                               re.M)}
        wait_for(lambda: printed() >= answered, 10, message="every printed line in the log")
        assert printed() == answered
        print(f"{len(answered)} requests, 5 logging agent kills, 0 lost, 0 duplicated")
    finally:
        server.stop()


def test_helper_agent_kill_under_load_is_back_within_3_seconds() -> None:
    with running_server(INSTRUMENTED_APP, "--min-instances", "2") as server:
        with RequestLoop(server.port, limit=3000, pause=0.002) as loop:
            time.sleep(0.3)
            helper = server.agent_pid("PassengerHelperAgent")
            sent_before = len(loop.results)
            os.kill(helper, signal.SIGKILL)
            killed_at = time.monotonic()
            wait_for(lambda: any(s == 200 for _, s, _ in loop.results[sent_before + 2:]), 3,
                     message="a 200 after the kill")
            back_in = time.monotonic() - killed_at
            time.sleep(0.3)
        failed = [r for r in loop.results if r[1] != 200]
        print(f"helper agent kill -9 under load: first 200 after {back_in * 1000:.0f} ms; "
              f"{len(failed)} of {len(loop.results)} requests failed")
        assert back_in < 3.0
        # Clients wait in the backlog while the helper agent restarts: every request sent
        # after the kill is answered, none refused. The one client sends one request at
        # a time, so only the one the killed agent had accepted may be lost (see the
        # xfail below): #sent_before, or the next if that one ended just before the kill.
        assert len(failed) <= 1, failed
        for i, _, error in failed:
            assert i in (sent_before, sent_before + 1), (sent_before, failed)
            assert "refused" not in error.lower(), failed


def test_a_request_in_flight_when_the_helper_agent_is_killed_is_closed_and_the_next_served(
        ) -> None:
    """README (Crashes): the connection the killed helper agent held is closed without a
    response (nothing can answer it: its process is gone); the client's next request,
    on a new connection, is answered by the restarted one."""
    with running_server(INSTRUMENTED_APP, "--min-instances", "1") as server:
        wait_for(lambda: server.app_pids(), 10, message="an app process")
        outcome: list[tuple[int, bytes] | str] = []

        def slow() -> None:
            try:
                status, _, body = server.get("/sleep?s=1", timeout=10)
                outcome.append((status, body))
            except OSError as exc:
                outcome.append(str(exc))

        client = threading.Thread(target=slow)
        client.start()
        try:
            wait_for(lambda: any(p["sessions"] for g in server.status()["groups"]
                                 for p in g["processes"]), 5,
                     message="the request in the app")
            os.kill(server.agent_pid("PassengerHelperAgent"), signal.SIGKILL)
        finally:
            client.join(15)
        assert len(outcome) == 1 and isinstance(outcome[0], str), outcome
        assert "timed out" not in outcome[0], outcome  # closed at once, not left hanging
        status, _, _ = server.get("/", timeout=10)
        assert status == 200


def test_killed_watchdog_leaves_nothing_and_the_next_cli_call_cleans_up() -> None:
    with running_server(INSTRUMENTED_APP, "--min-instances", "2") as server:
        wait_for(lambda: len(server.app_pids()) == 2, 10, message="two app processes")
        server.remember_descendants()
        started = set(server.seen_pids)
        instance = server.instance_dir()
        assert instance is not None and len(started) == 6  # with the preloader
        os.kill(server.watchdog_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: all(is_gone(pid) for pid in started), 2.0,
                 message="every process gone within 2 s")
        print(f"watchdog kill -9: all processes gone after "
              f"{(time.monotonic() - killed_at) * 1000:.0f} ms")
        assert instance.exists()
        result = server.run_tool("passenger-status")
        assert result.returncode == 1
        assert f"Cleaning stale instance directory {instance}" in result.stderr
        assert "doesn't seem to be running" in result.stderr
        assert not instance.exists()


def test_logging_agent_crash_loop_backs_off_and_the_server_keeps_serving(
        tmp_path: Path) -> None:
    flag = tmp_path / "crash"
    wrapper = tmp_path / "logging-agent"
    wrapper.write_text(f"#!/bin/sh\n[ -e {flag} ] && exit 3\n"
                       f"exec {BIN / 'PassengerLoggingAgent'} \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    with running_server(INSTRUMENTED_APP, env={"PASSENGER_LOGGING_AGENT_PATH": str(wrapper)}
                        ) as server:
        flag.touch()
        os.kill(server.agent_pid("PassengerLoggingAgent"), signal.SIGKILL)
        deadline = time.monotonic() + 2.8  # restarts at once 5 times, then 0.5, 1, 2 s later
        served = 0
        while time.monotonic() < deadline:  # bounded: the loop ends by itself
            status, _, _ = server.get("/", timeout=5)
            assert status == 200
            served += 1
            time.sleep(0.05)
        flag.unlink()
        wait_for(lambda: "PassengerLoggingAgent restarted" in server.log(), 20,
                 message="the logging agent back after the crash loop")
        delays = [float(d) for d in re.findall(r"restarting it in ([\d.]+) s", server.log())]
        print(f"restart delays while crash-looping: {delays}; {served} requests served")
        assert delays[:3] == [0.5, 1.0, 2.0]
        server.wait_for_log("exited with exit status 3 while starting")


def test_daemonize_then_stop_leaves_nothing_running(tmp_path: Path) -> None:
    server = PassengerServer(INSTRUMENTED_APP)
    pid_file = server.registry / "passenger.pid"
    common = [str(INSTRUMENTED_APP), "--port", str(server.port), "--pid-file", str(pid_file)]
    try:
        started = subprocess.run(
            [str(BIN / "passenger"), "start", *common, "--address", "127.0.0.1",
             "--daemonize", "--log-file", str(server.log_file), *server.args],
            capture_output=True, text=True, env=server.env, timeout=30, check=False)
        assert started.returncode == 0, started.stderr
        assert "Passenger Standalone web server started" in started.stdout
        watchdog = int(pid_file.read_text())
        assert psutil.Process(watchdog).ppid() != os.getpid()
        tree = {watchdog, *(c.pid for c in psutil.Process(watchdog).children(recursive=True))}
        server.seen_pids |= tree
        assert server.get("/")[0] == 200
        status = server.run_tool("passenger", "status", *common)
        assert status.returncode == 0 and f"running on PID {watchdog}" in status.stdout
        stopped = server.run_tool("passenger", "stop", *common, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        assert all(is_gone(pid) for pid in tree)
        assert not pid_file.exists() and server.instance_dir() is None
        again = server.run_tool("passenger", "stop", *common)
        assert again.returncode == 1 and "not running" in again.stderr
    finally:
        for pid in server.seen_pids:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()


def test_logrotate_rename_and_reopen_loses_no_line() -> None:
    server = PassengerServer(INSTRUMENTED_APP)
    access_log = server.registry / "access.log"
    rotated = server.registry / "access.log.1"
    server.args += ["--access-log", str(access_log)]
    server.start()
    try:
        with RequestLoop(server.port, limit=3000, path=lambda i: f"/print?line=req-{i}",
                         pause=0.002) as loop:
            time.sleep(0.5)
            os.rename(access_log, rotated)
            result = server.run_tool("passenger-config", "reopen-logs")
            assert result.returncode == 0, result.stderr
            wait_for(access_log.exists, 5, message="a new access log")
            time.sleep(0.5)
        answered = {i for i, status, _ in loop.results if status == 200}
        wait_for(lambda: set(access_ids(access_log, rotated)) >= answered, 10,
                 message="every request in one of the two files")
        old, new = access_ids(rotated), access_ids(access_log)
        assert not set(old) & set(new)
        assert set(old) | set(new) == answered
        assert old and new and max(old) < min(new)
    finally:
        server.stop()


LOGROTATE = shutil.which("logrotate") or shutil.which("logrotate", path="/usr/sbin:/sbin")


@pytest.mark.skipif(LOGROTATE is None, reason="needs logrotate (.ci/run installs it)")
def test_logrotate_copytruncate_keeps_the_log_going_without_a_hole(tmp_path: Path) -> None:
    """logrotate's copytruncate copies the file and truncates it in place, telling nobody:
    the next lines must start the truncated file (no run of NULs up to the old size)."""
    server = PassengerServer(INSTRUMENTED_APP)
    server.log_file = tmp_path / "app.log"
    config = tmp_path / "logrotate.conf"
    config.write_text(f"{server.log_file} {{\n    copytruncate\n    rotate 1\n}}\n")
    server.start()
    try:
        for i in range(50):  # something to rotate away
            assert server.get(f"/print?line=before-{i}")[0] == 200
        server.wait_for_log("output: before-49")
        size_before = server.log_file.stat().st_size
        rotated = subprocess.run([str(LOGROTATE), "--force", "--state",
                                  str(tmp_path / "state"), str(config)],
                                 capture_output=True, text=True, timeout=60, check=False)
        assert rotated.returncode == 0, rotated.stderr
        old = tmp_path / "app.log.1"
        assert "output: before-49" in old.read_text()
        for i in range(5):
            assert server.get(f"/print?line=after-{i}")[0] == 200
        server.wait_for_log("output: after-4")
        data = server.log_file.read_bytes()
    finally:
        server.stop()
    nuls = data.count(0)
    assert nuls == 0, f"a hole of {nuls} NUL bytes in the log"
    assert len(data) < size_before
    lines = data.decode().splitlines()
    assert lines[0].endswith(" output: after-0"), lines[:3]  # the file starts afresh
    assert [x.split("output: ")[1] for x in lines if "output: " in x] == [
        f"after-{i}" for i in range(5)]


def test_unopenable_log_file_is_a_clear_startup_error() -> None:
    server = PassengerServer(INSTRUMENTED_APP)
    server.args += ["--access-log", "/nonexistent-dir/access.log"]
    server.start(wait_ready=False)
    assert server.proc is not None
    assert server.proc.wait(20) == 1
    errors = [line for line in server.console().splitlines() if "ERROR" in line]
    server.stop()
    assert errors == ["*** ERROR: PassengerLoggingAgent: cannot open the log file "
                      "/nonexistent-dir/access.log: No such file or directory"]
