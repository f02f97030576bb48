"""As root, app processes run as the owner of passenger_wsgi.py, never as root unless
asked (`--user root`), or as `--user`."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from support import INSTRUMENTED_APP, PassengerServer, running_server, wait_for

SYSTEM_PYTHON = "/usr/bin/python3"  # one that other users may run (ours may be private)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK),
    reason="needs root and a system-wide python3")


@pytest.fixture
def app_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="puser.", dir="/tmp"))
    root.chmod(0o755)
    shutil.copy(INSTRUMENTED_APP / "passenger_wsgi.py", root / "passenger_wsgi.py")
    (root / "passenger_wsgi.py").chmod(0o644)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def app_users(server_pids: list[int]) -> set[str]:
    return {psutil.Process(pid).username() for pid in server_pids}


@pytest.mark.parametrize("spawn_method", ["smart", "direct"])
def test_app_runs_as_the_owner_of_passenger_wsgi(app_dir: Path, spawn_method: str) -> None:
    daemon = pwd.getpwnam("daemon")
    os.chown(app_dir / "passenger_wsgi.py", daemon.pw_uid, daemon.pw_gid)
    with running_server(app_dir, "--python", SYSTEM_PYTHON, "--spawn-method", spawn_method,
                        "--min-instances", "2", ask_root=False) as server:
        pids = wait_for(lambda: len(p := server.app_pids()) == 2 and p, 15,
                        message="two processes")
        assert app_users(pids) == {"daemon"}
        osenv = server.get("/osenv")[2]
        assert b'"USER": "daemon"' in osenv
        assert server.get("/")[0] == 200


def test_root_owned_app_runs_as_nobody_not_root(app_dir: Path) -> None:
    with running_server(app_dir, "--python", SYSTEM_PYTHON, ask_root=False) as server:
        pids = wait_for(lambda: server.app_pids(), 15, message="a process")
        assert app_users(pids) == {"nobody"}


def test_user_option_and_unknown_user(app_dir: Path) -> None:
    with running_server(app_dir, "--user", "daemon", "--python", SYSTEM_PYTHON) as server:
        pids = wait_for(lambda: server.app_pids(), 15, message="a process")
        assert app_users(pids) == {"daemon"}
    bad = PassengerServer(app_dir, "--user", "no-such-user-here")
    bad.start(wait_ready=False)
    assert bad.proc is not None and bad.proc.wait(15) == 1
    assert "--user: there is no user named 'no-such-user-here'" in bad.console()
    bad.stop()


def test_start_refuses_when_the_apps_user_cannot_read_the_app(app_dir: Path) -> None:
    """Not a healthy banner over a 500 on every request: one line naming user and path."""
    app_dir.chmod(0o700)  # root's, so the app runs as nobody, who cannot enter it
    bad = PassengerServer(app_dir, "--python", SYSTEM_PYTHON, ask_root=False)
    bad.start(wait_ready=False)
    try:
        assert bad.proc is not None and bad.proc.wait(20) == 1
        console = bad.console()
        assert (f"user nobody (who runs the app) cannot read {app_dir}/passenger_wsgi.py"
                in console), console
        assert "Permission denied" in console
    finally:
        bad.stop()


def test_start_refuses_when_the_apps_user_cannot_run_the_interpreter(
        app_dir: Path, tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    python = private / "python3"
    python.symlink_to(SYSTEM_PYTHON)
    bad = PassengerServer(app_dir, "--python", str(python), ask_root=False)
    bad.start(wait_ready=False)
    try:
        assert bad.proc is not None and bad.proc.wait(20) == 1
        assert f"user nobody (who runs the app) cannot run {python}" in bad.console()
    finally:
        bad.stop()
