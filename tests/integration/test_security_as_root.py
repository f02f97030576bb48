"""Run as root, the server trusts nothing that the app's owner, the app's user or any other
local user controls. Each test plays one of them with a throwaway user it creates and
removes, and checks what root then does."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from support import (
    INSTRUMENTED_APP,
    PassengerServer,
    as_user,
    throwaway_user,
    wait_for,
)

SYSTEM_PYTHON = "/usr/bin/python3"  # one that other users may run (ours may be private)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK)
    or shutil.which("useradd") is None,
    reason="needs root (to play other users), useradd and a system-wide python3")

TERMINAL_ESCAPES = "\x1b]0;owned\x07\x1b[31m"  # window title, colour


@pytest.fixture
def owner() -> Iterator[pwd.struct_passwd]:
    """The app's owner (and, by default, the app's user)."""
    with throwaway_user("ptown") as user:
        yield user


@pytest.fixture
def other() -> Iterator[pwd.struct_passwd]:
    """Any other local user."""
    with throwaway_user("ptoth") as user:
        yield user


@pytest.fixture
def app_dir(owner: pwd.struct_passwd) -> Path:
    app = Path(owner.pw_dir) / "app"
    app.mkdir()
    shutil.copy(INSTRUMENTED_APP / "passenger_wsgi.py", app / "passenger_wsgi.py")
    for path in (Path(owner.pw_dir), app, app / "passenger_wsgi.py"):
        os.chown(path, owner.pw_uid, owner.pw_gid)
    Path(owner.pw_dir).chmod(0o755)
    app.chmod(0o755)
    return app


def run_as(user: pwd.struct_passwd, fn: object) -> str:
    return as_user(fn, user.pw_uid, user.pw_gid)  # type: ignore[arg-type]


def victim_file(tmp_path: Path) -> Path:
    """A root-only file the attacker would like root to write."""
    victim = tmp_path / "victim"
    victim.write_text("root's secret\n")
    victim.chmod(0o600)
    return victim


def server_for(app_dir: Path, *args: str) -> PassengerServer:
    return PassengerServer(app_dir, "--python", SYSTEM_PYTHON, *args, ask_root=False)


def start_fails(server: PassengerServer) -> str:
    server.start(wait_ready=False)
    assert server.proc is not None
    try:
        assert server.proc.wait(20) == 1, server.console()
        return server.console()
    finally:
        server.stop()


# -- 1. symbolic links planted in the app dir -----------------------------------------

def test_log_file_linked_by_the_app_owner_to_a_root_file_is_not_written(
        owner: pwd.struct_passwd, app_dir: Path, tmp_path: Path) -> None:
    victim = victim_file(tmp_path)
    server = server_for(app_dir)
    server.pass_file_options = False  # Passenger's default: passenger.PORT.log in the app dir
    link = app_dir / f"passenger.{server.port}.log"
    run_as(owner, lambda: os.symlink(victim, link) or "")
    assert link.is_symlink()
    console = start_fails(server)
    assert "log file" in console and str(link) in console
    assert victim.read_text() == "root's secret\n"


def test_pid_file_temporaries_planted_by_the_app_owner_are_not_followed(
        owner: pwd.struct_passwd, app_dir: Path, tmp_path: Path) -> None:
    victim = victim_file(tmp_path)
    server = server_for(app_dir)
    server.pass_file_options = False
    pid_file = app_dir / f"passenger.{server.port}.pid"
    last_pid = int(Path("/proc/sys/kernel/ns_last_pid").read_text())

    def plant() -> str:  # the temporary names the PID file once went through
        for pid in range(last_pid, last_pid + 400):
            os.symlink(victim, f"{pid_file}.{pid}.tmp")
        return "planted"
    assert run_as(owner, plant) == "planted"
    server.start()
    try:
        assert victim.read_text() == "root's secret\n"
        assert pid_file.read_text().strip() == str(server.watchdog_pid)
        st = os.lstat(pid_file)
        assert stat.S_ISREG(st.st_mode) and st.st_uid == owner.pw_uid  # written as the owner
        log = os.lstat(server.log_file)
        assert stat.S_ISREG(log.st_mode) and log.st_uid == owner.pw_uid
        assert stat.S_IMODE(log.st_mode) == 0o640
        assert server.get("/")[0] == 200
        assert server.run_tool("passenger", "stop", "--pid-file", str(pid_file)).returncode == 0
        assert server.proc is not None and server.proc.wait(15) == 0
    finally:
        server.stop()
    assert victim.read_text() == "root's secret\n"


def test_failed_spawn_output_cannot_start_a_line_in_the_log(
        owner: pwd.struct_passwd, app_dir: Path) -> None:
    crontab_line = "* * * * * root /tmp/x.sh"
    script = app_dir / "passenger_wsgi.py"
    script.write_text(f"print({crontab_line!r})\nraise SystemExit('broken on purpose')\n")
    server = server_for(app_dir)
    server.start()
    try:
        assert server.get("/")[0] == 500
        server.wait_for_log("broken on purpose")
        lines = server.log().splitlines()
        assert any(crontab_line in line for line in lines)
        assert not [line for line in lines if line.startswith("*")]
    finally:
        server.stop()


# -- 2. Passengerfile.json written by the app owner ------------------------------------

def test_privileged_settings_in_the_owners_passengerfile_are_ignored(
        owner: pwd.struct_passwd, app_dir: Path, tmp_path: Path) -> None:
    chosen = tmp_path / "chosen.log"
    passengerfile = app_dir / "Passengerfile.json"
    passengerfile.write_text(json.dumps({"user": "root", "log_file": str(chosen),
                                         "min_instances": 2}))
    os.chown(passengerfile, owner.pw_uid, owner.pw_gid)
    server = server_for(app_dir)
    server.pass_file_options = False
    server.start()
    try:
        pids = wait_for(lambda: len(p := server.app_pids()) == 2 and p, 15,
                        message="two processes (min_instances is not privileged)")
        assert {psutil.Process(pid).username() for pid in pids} == {owner.pw_name}
        assert not chosen.exists()
        server.wait_for_log("Helper agent online")  # in the default log file
        console = server.console()
        for name in ("user", "log_file"):
            assert f"ignoring '{name}' in {passengerfile}" in console
        assert "ignoring 'min_instances'" not in console
    finally:
        server.stop()


def test_a_startup_file_linked_to_another_users_file_runs_as_the_app_owner(
        owner: pwd.struct_passwd, other: pwd.struct_passwd, app_dir: Path) -> None:
    """Otherwise the owner's modules, first on sys.path, would run as that other user."""
    theirs = Path(other.pw_dir) / "wsgi.py"
    shutil.copy(INSTRUMENTED_APP / "passenger_wsgi.py", theirs)
    os.chown(theirs, other.pw_uid, other.pw_gid)
    Path(other.pw_dir).chmod(0o755)
    theirs.chmod(0o644)
    (app_dir / "passenger_wsgi.py").unlink()
    link = app_dir / "passenger_wsgi.py"
    run_as(owner, lambda: os.symlink(theirs, link) or "")
    server = server_for(app_dir)
    server.start()
    try:
        pids = wait_for(lambda: server.app_pids(), 15, message="a process")
        assert {psutil.Process(pid).username() for pid in pids} == {owner.pw_name}
    finally:
        server.stop()


# -- 3. fake instances in the registry -------------------------------------------------

def fake_instance(registry: Path, name: str, lock_is_fifo: bool = False) -> Path:
    """What another user can plant in a sticky registry: runs as that user."""
    fake = registry / name
    fake.mkdir(mode=0o755)
    if lock_is_fifo:
        os.mkfifo(fake / "lock")
    else:
        (fake / "lock").write_text("")
    (fake / "properties.json").write_text(json.dumps({
        "instance_id": "fake", "listen": f"http://{TERMINAL_ESCAPES}evil:80/",
        "app_roots": [f"/{TERMINAL_ESCAPES}"], "pid_file": "/tmp/x",
        "watchdog_pid": 1, "created_at": time.time()}))
    (fake / "creation_finalized").write_text("")
    return fake


def listen_as(user: pwd.struct_passwd, path: Path,
              stop: Path) -> tuple[threading.Thread, list[str]]:
    """A socket that `user` serves at `path` until `stop` exists; once the thread ends,
    the list holds how many connections it accepted."""
    result: list[str] = []

    def serve() -> str:
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))
            server.listen(16)
            server.settimeout(0.1)
            accepted = 0
            deadline = time.monotonic() + 60
            while not stop.exists() and time.monotonic() < deadline:
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                accepted += 1
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                conn.close()
            return str(accepted)

    thread = threading.Thread(target=lambda: result.append(run_as(user, serve)), daemon=True)
    thread.start()
    wait_for(path.exists, 10, message="the attacker's socket")
    return thread, result


def test_root_cli_ignores_instances_planted_by_another_user(
        other: pwd.struct_passwd, tmp_path: Path) -> None:
    server = PassengerServer(INSTRUMENTED_APP)
    server.registry.chmod(0o1777)  # like /tmp: anyone may create, only owners may remove
    server.start()
    stop = server.registry / "stop-fake"
    try:
        fake = Path(run_as(other, lambda: str(fake_instance(server.registry,
                                                            "passenger.fake0001"))))
        run_as(other, lambda: str(fake_instance(server.registry, "passenger.fifo0001",
                                                lock_is_fifo=True)))
        listener, accepted = listen_as(other, fake / "admin.sock", stop)

        status = server.run_tool("passenger-status", timeout=10)  # the FIFO must not hang it
        assert status.returncode == 0, status.stderr
        assert "evil" not in status.stdout and "\x1b" not in status.stdout
        assert str(INSTRUMENTED_APP) in status.stdout  # the real instance, alone

        listed = server.run_tool("passenger-config", "list-instances", "-v", timeout=10)
        assert listed.returncode == 0, listed.stderr
        assert "\x1b" not in listed.stdout + listed.stderr
        skipped = listed.stdout + listed.stderr
        assert "passenger.fake0001" in skipped and f"owned by user {other.pw_uid}" in skipped
        assert "passenger.fifo0001" in skipped

        restart = server.run_tool("passenger-config", "restart-app", "/", timeout=20)
        assert restart.returncode == 0, restart.stderr
        memory = server.run_tool("passenger-memory-stats", timeout=20)
        assert "\x1b" not in memory.stdout
    finally:
        stop.write_text("")
        if "listener" in locals():
            listener.join(10)
        server.stop()
    assert accepted == ["0"], "root's CLI talked to another user's socket"


def test_root_cli_hides_terminal_escapes_an_app_owner_put_in_a_path(
        owner: pwd.struct_passwd) -> None:
    app = Path(owner.pw_dir) / f"app{TERMINAL_ESCAPES}"
    app.mkdir()
    shutil.copy(INSTRUMENTED_APP / "passenger_wsgi.py", app / "passenger_wsgi.py")
    for path in (Path(owner.pw_dir), app, app / "passenger_wsgi.py"):
        os.chown(path, owner.pw_uid, owner.pw_gid)
    Path(owner.pw_dir).chmod(0o755)
    server = server_for(app)
    server.start()
    try:
        for tool in (["passenger-status"], ["passenger-status", "--show=json"],
                     ["passenger-config", "list-instances"], ["passenger-memory-stats"]):
            result = server.run_tool(*tool)
            assert result.returncode == 0, (tool, result.stderr)
            assert "\x1b" not in result.stdout and "\x07" not in result.stdout, tool
        assert "\\x1b]0;owned\\x07" in server.run_tool("passenger-status").stdout
    finally:
        server.stop()


# -- 4. the registry itself --------------------------------------------------------

def test_registry_owned_by_another_user_or_writable_by_all_is_refused(
        other: pwd.struct_passwd, tmp_path: Path) -> None:
    server = PassengerServer(INSTRUMENTED_APP)
    server.log_file, server.pid_file = tmp_path / "1.log", tmp_path / "1.pid"
    os.chown(server.registry, other.pw_uid, other.pw_gid)
    console = start_fails(server)
    assert f"--instance-registry-dir: {server.registry} is owned by user {other.pw_uid}" \
        in console
    assert not list(server.registry.glob("passenger.*"))

    server = PassengerServer(INSTRUMENTED_APP)
    server.log_file, server.pid_file = tmp_path / "2.log", tmp_path / "2.pid"
    server.registry.chmod(0o777)
    console = start_fails(server)
    assert "is writable by others and not sticky" in console


# -- 5. app sockets ------------------------------------------------------------------

def test_app_socket_is_root_only_whatever_the_apps_umask(
        owner: pwd.struct_passwd, other: pwd.struct_passwd, app_dir: Path) -> None:
    script = app_dir / "passenger_wsgi.py"
    script.write_text("import os\nos.umask(0)\n" + script.read_text())
    server = server_for(app_dir, "--min-instances", "2")
    server.start()
    try:
        wait_for(lambda: len(server.app_pids()) == 2, 15, message="two processes")
        instance = server.instance_dir()
        assert instance is not None
        apps = instance / "apps"
        st = os.stat(apps)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700)
        sockets = [p for p in apps.iterdir() if stat.S_ISSOCK(os.lstat(p).st_mode)]
        assert sockets
        for path in sockets:
            st = os.lstat(path)
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600), path
        listed = Path("/proc/net/unix").read_text()
        assert str(sockets[0]) in listed  # anyone can see where it is...

        def connect() -> str:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(sockets[0]))
            except PermissionError:
                return "EACCES"
            return "connected"
        assert run_as(other, connect) == "EACCES"  # ...but no one else can reach it
        assert run_as(owner, connect) == "EACCES"  # not even the app's own user
        assert not (instance / "loader").exists()  # no code of ours for the app to read
        assert server.get("/")[0] == 200
    finally:
        server.stop()


# -- 11. modes -----------------------------------------------------------------------

def test_instance_dir_and_logs_are_not_world_readable(tmp_path: Path) -> None:
    server = PassengerServer(INSTRUMENTED_APP)
    server.args += ["--access-log", str(server.registry / "access.log")]
    server.start()
    try:
        instance = server.instance_dir()
        assert instance is not None
        assert server.get("/")[0] == 200
        wait_for(lambda: (server.registry / "access.log").exists(), 5, message="access log")
        files = ("properties.json", "lock", "watchdog.pid", "creation_finalized")
        for path, mode in ((instance, 0o750), *((instance / name, 0o640) for name in files),
                           (instance / "apps", 0o700), (instance / "buffers", 0o700),
                           (server.log_file, 0o640), (server.registry / "access.log", 0o640),
                           (instance / "admin.sock", 0o600)):
            st = os.lstat(path)
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, mode), path
    finally:
        server.stop()


# -- the admin socket: SO_PEERCRED behind the file permissions -------------------------

def admin_call(path: Path) -> str:
    """GET /ping.json on the admin socket -> the raw answer, or the connect error."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        try:
            sock.connect(str(path))
        except OSError as exc:
            return f"connect: {exc.strerror}"
        sock.sendall(b"GET /ping.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer.decode()


def test_admin_socket_refuses_another_user_even_when_its_permissions_let_them_in(
        other: pwd.struct_passwd) -> None:
    server = PassengerServer(INSTRUMENTED_APP)
    try:
        server.start()
        instance = server.instance_dir()
        assert instance is not None
        admin = instance / "admin.sock"
        assert run_as(other, lambda: admin_call(admin)) == "connect: Permission denied"
        # Suppose the modes were loosened (an admin's chmod): SO_PEERCRED still says no.
        instance.chmod(0o755)
        admin.chmod(0o666)
        refused = run_as(other, lambda: admin_call(admin))
        head, _, body = refused.partition("\r\n\r\n")
        assert head.startswith("HTTP/1.1 403 "), refused
        assert json.loads(body) == {"error": "only root and the instance's owner may use "
                                             "the admin API"}
        assert admin_call(admin).startswith("HTTP/1.1 200 ")  # root, the owner, still may
    finally:
        server.stop()
