"""systemd: Type=notify over a datagram socket the test holds, the shipped unit file, and
the shipped logrotate file run by the real logrotate under traffic."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from support import BIN, INSTRUMENTED_APP, PassengerServer, RequestLoop, wait_for

DEPLOY = Path(__file__).parents[2] / "deploy"


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []

    def collect(self, seconds: float) -> list[str]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
        return [m for _, m in self.messages]

    def close(self) -> None:
        self.sock.close()


def test_notify_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify")
    server = PassengerServer(INSTRUMENTED_APP, env={
        "NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "600000"})
    server.start()
    try:
        messages = notify.collect(1.5)
        ready = next(m for m in messages if "READY=1" in m)
        assert f"MAINPID={server.watchdog_pid}" in ready
        assert re.search(rf"STATUS=Serving {INSTRUMENTED_APP} on http://127.0.0.1:"
                         rf"{server.port}", ready)
        pings = [t for t, m in notify.messages if m == "WATCHDOG=1"]
        assert len(pings) >= 3  # every 0.3 s: half of WATCHDOG_USEC
        # The variables are ours alone: no app process may notify systemd.
        env = server.get("/osenv")[2]
        assert b"NOTIFY_SOCKET" not in env and b"WATCHDOG_USEC" not in env
        helper = server.agent_pid("PassengerHelperAgent")
        os.kill(helper, signal.SIGSTOP)  # hung: systemd must stop hearing from us
        try:
            notify.messages.clear()
            silent = notify.collect(1.5)
        finally:
            os.kill(helper, signal.SIGCONT)
        assert "WATCHDOG=1" not in silent
        wait_for(lambda: "WATCHDOG=1" in notify.collect(0.5), 5, message="pings again")
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGTERM)
        server.proc.wait(20)
        assert any(m.startswith("STOPPING=1") for m in notify.collect(0.5))
    finally:
        server.stop()
        notify.close()


def test_no_notify_socket_means_no_notifications(tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify")
    server = PassengerServer(INSTRUMENTED_APP)  # NOTIFY_SOCKET not set
    server.start()
    try:
        assert notify.collect(0.5) == []
    finally:
        server.stop()
        notify.close()


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (DEPLOY / "passenger.service").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_unit_file_is_type_notify_and_hardened() -> None:
    settings = unit_settings()
    assert settings["Type"] == ["notify"] and settings["NotifyAccess"] == ["main"]
    assert "WatchdogSec" in settings and "Restart" in settings
    exec_start = settings["ExecStart"][0]
    assert " start " in exec_start and "--daemonize" not in exec_start
    assert "--metrics-address" in exec_start
    for hardening in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "ProtectHome",
                      "CapabilityBoundingSet", "RestrictSUIDSGID", "ProtectKernelTunables"):
        assert hardening in settings, hardening
    # PrivateTmp hides /tmp: the registry must be somewhere the CLI can find it.
    assert "--instance-registry-dir /run/passenger" in exec_start
    assert settings["RuntimeDirectory"] == ["passenger"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_unit_file_passes_systemd_analyze(tmp_path: Path) -> None:
    unit = tmp_path / "passenger.service"
    text = (DEPLOY / "passenger.service").read_text()
    unit.write_text(text.replace("/opt/passenger/.venv/bin/", f"{BIN}/"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60, check=False)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if str(unit) in line or "passenger.service" in line]
    assert not problems, problems


# Debian installs it in /usr/sbin, which a non-root user's PATH lacks.
LOGROTATE = shutil.which("logrotate") or shutil.which("logrotate", path="/usr/sbin:/sbin")


@pytest.mark.skipif(LOGROTATE is None, reason="needs logrotate (.ci/run installs it)")
def test_logrotate_file_rotates_under_traffic_and_loses_no_line(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    server = PassengerServer(INSTRUMENTED_APP, "--access-log", str(logs / "access.log"))
    server.log_file = logs / "app.log"
    config = tmp_path / "logrotate.conf"
    config.write_text((DEPLOY / "logrotate").read_text()
                      .replace("/var/log/passenger/", f"{logs}/")
                      .replace("/opt/passenger/.venv/bin/", f"{BIN}/")
                      .replace("/run/passenger", str(server.registry)))
    server.start()
    try:
        with RequestLoop(server.port, limit=4000, path=lambda i: f"/print?line=req-{i}",
                         pause=0.002) as loop:
            for _ in range(3):
                time.sleep(0.4)
                rotated = subprocess.run([str(LOGROTATE), "--force", "--state",
                                          str(tmp_path / "state"), str(config)],
                                         capture_output=True, text=True, timeout=60,
                                         check=False)
                assert rotated.returncode == 0, rotated.stderr
            time.sleep(0.3)
        answered = {i for i, status, _ in loop.results if status == 200}
        assert len(answered) > 100 and len(answered) == len(loop.results)

        def ids(name: str, pattern: str) -> list[int]:
            found = []
            for path in logs.glob(f"{name}*"):
                text = (subprocess.run(["gzip", "-dc", str(path)], capture_output=True,
                                       check=True).stdout.decode()
                        if path.suffix == ".gz" else path.read_text())
                found += [int(m) for m in re.findall(pattern, text, re.M)]
            return found
        access = r'"GET /print\?line=req-(\d+) '
        wait_for(lambda: set(ids("access.log", access)) >= answered, 10,
                 message="every request in the access logs")
        assert sorted(ids("access.log", access)) == sorted(answered)  # once each
        printed = r"App \d+ output: req-(\d+)$"
        wait_for(lambda: set(ids("app.log", printed)) >= answered, 10,
                 message="every line in the main logs")
        assert sorted(ids("app.log", printed)) == sorted(answered)
        assert len(list(logs.glob("access.log.*"))) >= 2  # it did rotate
        # and the logging agent reopened: the newest lines are in the new files
        assert re.search(access, (logs / "access.log").read_text())
        assert re.search(printed, (logs / "app.log").read_text(), re.M)
    finally:
        server.stop()
