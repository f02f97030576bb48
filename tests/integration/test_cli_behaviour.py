"""What a new user meets first: refusals that say what is wrong, usage errors, pipes and
Ctrl-C, and hints that work as printed."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from support import BIN, INSTRUMENTED_APP, PassengerServer, is_gone, running_server


def test_start_refuses_a_directory_without_passenger_wsgi(tmp_path: Path) -> None:
    server = PassengerServer(tmp_path)
    server.start(wait_ready=False)
    try:
        assert server.proc is not None and server.proc.wait(20) == 1
        console = server.console()
        assert f"{tmp_path} has no passenger_wsgi.py" in console
        assert "--app-start-command" in console
        assert "Passenger Standalone web server started" not in console
    finally:
        server.stop()


COMMANDS = [["passenger", "start"], ["passenger", "stop"], ["passenger", "status"],
            ["passenger"], ["passenger-status"], ["passenger-config"],
            ["passenger-config", "list-instances"], ["passenger-config", "restart-app", "/"],
            ["passenger-memory-stats"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_unknown_option_prints_usage_and_names_it_with_exit_2(command: list[str]) -> None:
    result = subprocess.run([str(BIN / command[0]), *command[1:], "--bogus=1"],
                            capture_output=True, text=True, timeout=20, check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert "Usage" in result.stderr and "Option(" not in result.stderr
    assert lines[-1] == f"{' '.join(command[:2] if command[0] == 'passenger' else command[:1])}"\
                        f": unknown option --bogus"


def test_a_closed_pipe_is_quiet() -> None:
    """`passenger-memory-stats | head -0`: the reader is gone before we write."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([str(BIN / "passenger-memory-stats")], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=30, check=False)
    finally:
        os.close(write_end)
    assert result.returncode == 1
    assert result.stderr == ""


def test_ctrl_c_in_a_waiting_command_exits_130_quietly() -> None:
    with running_server(INSTRUMENTED_APP, "--graceful-timeout", "20") as server:
        busy = threading.Thread(target=lambda: server.get("/sleep?s=5", timeout=30),
                                daemon=True)
        busy.start()
        time.sleep(0.3)
        stop = subprocess.Popen([str(BIN / "passenger"), "stop", "--pid-file",
                                 str(server.pid_file)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=server.env)
        try:
            server.wait_for_log("Received SIGTERM")  # stop is now waiting for the exit
            stop.send_signal(signal.SIGINT)
            out, err = stop.communicate(timeout=10)
        finally:
            if stop.poll() is None:
                stop.kill()
                stop.wait(5)
        assert stop.returncode == 130
        assert (out, err) == ("", "")
        busy.join(30)


def test_daemonize_banner_stop_hint_works_as_printed(tmp_path: Path) -> None:
    for with_pid_file in (False, True):
        app = tmp_path / f"app{int(with_pid_file)}"
        shutil.copytree(INSTRUMENTED_APP, app)
        server = PassengerServer(app)
        server.pass_file_options = with_pid_file
        extra = server.file_options()
        try:
            started = subprocess.run(
                [str(BIN / "passenger"), "start", str(app), "--address", "127.0.0.1",
                 "--port", str(server.port), "--daemonize", *extra, *server.args],
                capture_output=True, text=True, env=server.env, timeout=60, check=False)
            assert started.returncode == 0, started.stderr
            hint = next(line for line in started.stdout.splitlines()
                        if line.startswith("Shutdown with: "))
            argv = shlex.split(hint.removeprefix("Shutdown with: "))
            assert argv[0] == "passenger"
            watchdog = int(server.pid_file.read_text())
            server.seen_pids.add(watchdog)
            stopped = subprocess.run([str(BIN / "passenger"), *argv[1:]], cwd="/",
                                     capture_output=True, text=True, env=server.env,
                                     timeout=60, check=False)
            assert stopped.returncode == 0, (hint, stopped.stderr)
            assert is_gone(watchdog)
        finally:
            for pid in server.seen_pids:
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).kill()
            shutil.rmtree(server.registry, ignore_errors=True)
