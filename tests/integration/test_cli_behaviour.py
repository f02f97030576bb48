"""What a new user meets first: refusals that say what is wrong, usage errors, pipes and
Ctrl-C, and hints that work as printed."""

from __future__ import annotations

from pathlib import Path

from support import PassengerServer


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
