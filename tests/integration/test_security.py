"""Boundaries that hold for any user running the server (root or not): what a stale PID
file, a broken restart or a failing app can make the server do. The root-only ones, with
other users playing attackers, are in test_security_as_root."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from support import BIN, INSTRUMENTED_APP, PassengerServer, http_request, running_server, wait_for


def test_passenger_stop_signals_no_process_a_stale_pid_file_names(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        pid_file = tmp_path / "passenger.pid"
        pid_file.write_text(f"{sleeper.pid}\n")
        result = subprocess.run([str(BIN / "passenger"), "stop", "--pid-file", str(pid_file)],
                                capture_output=True, text=True, timeout=20, check=False)
        assert result.returncode == 1
        assert f"PID {sleeper.pid} in {pid_file} is not a Passenger watchdog" in result.stderr
        time.sleep(0.2)
        assert sleeper.poll() is None  # not signalled
    finally:
        sleeper.kill()
        sleeper.wait(5)


def test_passenger_stop_refuses_a_watchdog_younger_than_the_pid_file(tmp_path: Path) -> None:
    """A PID file left from long ago that a new watchdog's PID happens to match."""
    with running_server(INSTRUMENTED_APP) as server:
        old = tmp_path / "old.pid"
        old.write_text(f"{server.watchdog_pid}\n")
        an_hour_ago = time.time() - 3600
        os.utime(old, (an_hour_ago, an_hour_ago))
        result = server.run_tool("passenger", "stop", "--pid-file", str(old))
        assert result.returncode == 1 and "not a Passenger watchdog" in result.stderr
        assert server.get("/")[0] == 200
        assert server.proc is not None and server.proc.poll() is None


def test_failed_helper_agent_restart_backs_off_and_the_server_stays_up() -> None:
    with running_server(INSTRUMENTED_APP) as server:
        instance = server.instance_dir()
        assert instance is not None
        buffers = instance / "buffers"
        buffers.rmdir()
        buffers.write_text("in the way")  # the next helper agent cannot make its dir
        helper = server.agent_pid("PassengerHelperAgent")
        os.kill(helper, signal.SIGKILL)
        server.wait_for_log("PassengerHelperAgent failed to restart", timeout=10)
        time.sleep(3)  # several failed restarts, backing off
        assert server.proc is not None and server.proc.poll() is None, server.console()
        log = server.log()
        assert "backing off" in log and "stopping" not in log
        buffers.unlink()  # the cause goes away: the next attempt succeeds
        status = wait_for(lambda: _answer(server.port), 40, interval=0.2,
                          message="served again")
        assert status == 200
        assert server.find_agent_pid("PassengerHelperAgent") not in (None, helper)


def _answer(port: int) -> int | None:
    try:
        return http_request(port, "/", timeout=5)[0]
    except OSError:
        return None


def test_spawn_error_page_shows_no_server_environment(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "passenger_wsgi.py").write_text(
        "import sys\nprint('starting up')\nraise RuntimeError('broken on purpose')\n")
    server = PassengerServer(app, env={"MY_SECRET": "hunter2", "DATABASE_URL": "pg://x:y@z",
                                       "SERVER_ONLY": "marker-4411"})
    server.start()
    try:
        status, _, body = server.get("/")
        page = body.decode()
        assert status == 500 and "broken on purpose" in page  # development: detailed
        assert "PASSENGER_APP_ENV" in page  # what we set for the app is shown
        for secret in ("hunter2", "MY_SECRET", "pg://x:y@z", "marker-4411"):
            assert secret not in page
    finally:
        server.stop()
