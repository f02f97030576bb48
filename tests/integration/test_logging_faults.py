"""The logging agent stalled or facing a full disk: requests go on, nothing lost that the
pipes can hold, and what is dropped is counted once per stall, where an operator looks."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import INSTRUMENTED_APP, PassengerServer, wait_for

DROP_NOTICE = re.compile(r"\d+ log \]: (\d+) access log lines dropped between ")
REQUESTS = 40_000  # more than 1 MiB of pipe plus the helper agent's 10,000 buffered lines


@pytest.mark.skipif(shutil.which("ab") is None, reason="needs ab (apache2-utils, which "
                                                         ".ci/run installs with apache2)")
def test_stalled_logging_agent_costs_one_notice_and_passenger_status_counts_the_drops(
) -> None:
    server = PassengerServer(INSTRUMENTED_APP, "--min-instances", "2")
    access_log = server.registry / "access.log"
    server.args += ["--access-log", str(access_log)]
    server.start()
    logging_agent = server.agent_pid("PassengerLoggingAgent")
    try:
        def logged() -> int:
            return access_log.read_text().count('"GET / HTTP/1.') if access_log.exists() else 0
        wait_for(logged, 5, message="the start's own request logged")
        time.sleep(0.5)
        before = logged()
        os.kill(logging_agent, signal.SIGSTOP)
        try:
            ab = subprocess.run(["ab", "-q", "-k", "-n", str(REQUESTS), "-c", "16",
                                 f"http://127.0.0.1:{server.port}/"],
                                capture_output=True, text=True, timeout=60, check=False)
            during = server.get("/")[0]
        finally:
            os.kill(logging_agent, signal.SIGCONT)
        assert ab.returncode == 0, ab.stdout + ab.stderr
        assert re.search(rf"Complete requests:\s+{REQUESTS}\b", ab.stdout), ab.stdout
        assert re.search(r"Failed requests:\s+0\b", ab.stdout), ab.stdout
        assert during == 200  # requests never waited for the logging agent
        wait_for(lambda: DROP_NOTICE.search(server.log()), 10, message="the drop notice")
        time.sleep(1.5)  # a second notice would come with the next flush
        notices = DROP_NOTICE.findall(server.log())
        assert len(notices) == 1, notices  # one per stall, not one per line
        dropped = int(notices[0])
        assert "dropped" not in access_log.read_text()  # stays parseable
        assert dropped > 0 and logged() - before + dropped == REQUESTS + 1  # +1: `during`
        drops = server.status()["log_lines_dropped"]
        assert drops["helper agent, access log"] == dropped
        text = server.run_tool("passenger-status").stdout
        assert f"Log lines dropped : {dropped} (helper agent, access log)" in text
        assert server.find_agent_pid("PassengerLoggingAgent") == logging_agent
        print(f"{REQUESTS + 1} requests while the logging agent was stopped: "
              f"{logged() - before} logged, "
              f"{dropped} dropped, 1 notice")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(logging_agent, signal.SIGCONT)
        server.stop()


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                    str(path)], check=True, timeout=10)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=10)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
    finally:
        os.close(fd)
    return filler


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_does_not_kill_the_logging_agent_and_nothing_is_lost(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "disk", "1m") as disk:
        server = PassengerServer(INSTRUMENTED_APP, "--min-instances", "1")
        server.log_file = disk / "passenger.log"
        server.start()
        try:
            logging_agent = server.agent_pid("PassengerLoggingAgent")
            filler = fill(disk)
            lines = [f"while-full-{i}" for i in range(200)]
            for line in lines:
                assert server.get(f"/print?line={line}")[0] == 200
            wait_for(lambda: "No space left on device" in server.console(), 10,
                     message="the cause on stderr")
            time.sleep(2.5)  # two retries, and no crash loop
            assert server.find_agent_pid("PassengerLoggingAgent") == logging_agent
            assert "while-full-199" not in server.log()
            filler.unlink()  # space returns
            wait_for(lambda: "while-full-199" in server.log(), 10,
                     message="the waiting lines written")
            wait_for(lambda: "could not write" in server.log(), 5, message="the notice")
            log = server.log()
            for line in lines:
                assert log.count(f"App output: {line}\n") + len(
                    re.findall(rf"App \d+ output: {line}\n", log)) == 1, line
            notice = next(x for x in log.splitlines() if "could not write" in x)
            assert "No space left on device" in notice and str(server.log_file) in notice
            assert server.find_agent_pid("PassengerLoggingAgent") == logging_agent
            assert server.get("/")[0] == 200
            print(notice)
            print(server.console())
        finally:
            server.stop()


def test_every_agents_drops_show_in_passenger_status() -> None:
    """With no lines held (PASSENGER_LOG_BUFFER_LINES=0) and the main log's pipe full, the
    watchdog's own lines about a helper-agent restart are dropped: it counts them, tells
    the new helper agent, and says so in the log once the logging agent is back."""
    server = PassengerServer(INSTRUMENTED_APP, env={"PASSENGER_LOG_BUFFER_LINES": "0"})
    server.start()
    logging_agent = server.agent_pid("PassengerLoggingAgent")
    try:
        os.kill(logging_agent, signal.SIGSTOP)
        try:
            big = "y" * 4000
            for _ in range(300):  # 1.2 MB of app output: more than the 1 MiB pipe holds
                assert server.get(f"/print?line={big}")[0] == 200
            helper = server.agent_pid("PassengerHelperAgent")
            os.kill(helper, signal.SIGKILL)
            wait_for(lambda: server.find_agent_pid("PassengerHelperAgent") not in (None, helper),
                     10, message="a new helper agent")
            wait_for(lambda: server.status()["log_lines_dropped"]["watchdog, main log"], 10,
                     message="the watchdog's drops in the status")
        finally:
            os.kill(logging_agent, signal.SIGCONT)
        time.sleep(2.5)  # caught up, and every writer has flushed its notice
        assert server.get("/")[0] == 200
        drops = server.status()["log_lines_dropped"]
        text = server.run_tool("passenger-status").stdout
        log = server.log()
        helper = server.find_agent_pid("PassengerHelperAgent")
        for writer, pid in (("watchdog, main log", server.watchdog_pid),
                            ("helper agent, main log", helper)):
            assert drops[writer] > 0, writer
            assert f"{drops[writer]} ({writer})" in text
            notices = re.findall(rf" {pid} log \]: (\d+) main log lines dropped ", log)
            assert sum(map(int, notices)) == drops[writer], (writer, notices)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(logging_agent, signal.SIGCONT)
        server.stop()
