"""Starting a real server for a test, talking to it, and making sure nothing outlives it."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from passenger.common import process_title

BIN = Path(sys.executable).parent
TESTS = Path(__file__).parent
HELLO_APP = TESTS.parent / "examples" / "hello"
INSTRUMENTED_APP = TESTS / "apps" / "instrumented"
# The titles our agents and WSGI app processes set (passenger.common.process_title). A
# generic app (--app-start-command) keeps its own command line: it has no such title.
PASSENGER_TITLES = (process_title.WATCHDOG, process_title.HELPER_AGENT,
                    process_title.LOGGING_AGENT, process_title.WSGI_APP_PREFIX,
                    process_title.PRELOADER_PREFIX)

# Every process this test session starts inherits the marker in its environment. Our
# agents' setproctitle writes the title over the environment block, so theirs no longer
# shows it; they hold files in their instance registry instead, which PassengerServer
# names after the session (REGISTRY_PREFIX).
SESSION_MARKER = uuid.uuid4().hex
os.environ["PASSENGER_TEST_SESSION"] = SESSION_MARKER
REGISTRY_PREFIX = f"/tmp/pt.{SESSION_MARKER[:8]}."


def as_nobody(fn: Callable[[], str], timeout: float = 20.0) -> str:
    """fn() in a forked child that (when we are root) first drops to nobody, as an
    ordinary user would run it: root reads mode-000 files, so only a real privilege drop
    shows EACCES."""
    return as_user(fn, 65534, 65534, timeout)


def as_user(fn: Callable[[], str], uid: int, gid: int, timeout: float = 20.0) -> str:
    """fn() in a forked child that (when we are root) first becomes uid/gid. No exec: our
    venv may be out of that user's reach. Bounded; always reaped."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        status = 1
        try:
            os.close(r)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
            os.write(w, fn().encode())
            status = 0
        except BaseException as exc:
            os.write(w, f"child failed: {exc!r}".encode())
        finally:
            os._exit(status)
    os.close(w)
    chunks = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([r], [], [], 0.1)[0]:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(r)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return b"".join(chunks).decode()


@contextlib.contextmanager
def throwaway_user(prefix: str = "pt") -> Iterator[pwd.struct_passwd]:
    """A new unprivileged user (root only) with a home dir, removed with its files and
    processes afterwards, whatever happens."""
    name = f"{prefix}{os.getpid() % 100000}{int(time.monotonic() * 1000) % 1000}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", "--user-group", name],
                   check=True, capture_output=True, timeout=30)
    try:
        yield pwd.getpwnam(name)
    finally:
        theirs = [p for p in psutil.process_iter(["uids"])
                  if p.info["uids"] and p.info["uids"].real == pwd.getpwnam(name).pw_uid]
        for proc in theirs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(theirs, timeout=5)
        subprocess.run(["userdel", "--remove", name], check=False, capture_output=True,
                       timeout=30)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the one helper for the tests;
    the benchmarks have their own in benchmarks/procs.py)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.02,
             message: str = "condition") -> Any:
    """Poll until `predicate()` is truthy; raise with `message` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} not reached within {timeout} s")
        time.sleep(interval)


def http_request(port: int, path: str = "/", method: str = "GET", body: bytes | None = None,
                 headers: dict[str, str] | None = None,
                 timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def concurrent_requests(port: int, paths: list[str], timeout: float = 30
                        ) -> list[tuple[int, bytes, float]]:
    """Send all requests at once (one thread each); -> (status, body, seconds) each."""
    results: list[tuple[int, bytes, float]] = [(0, b"", 0.0)] * len(paths)
    barrier = threading.Barrier(len(paths))

    def one(i: int, path: str) -> None:
        barrier.wait(10)
        started = time.monotonic()
        try:
            status, _, body = http_request(port, path, timeout=timeout)
        except OSError as exc:
            status, body = 0, str(exc).encode()
        results[i] = (status, body, time.monotonic() - started)

    threads = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(paths)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 15)
    return results


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def has_passenger_title(proc: psutil.Process) -> bool:
    try:
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return cmdline.startswith(PASSENGER_TITLES)


class PassengerServer:
    """A real `passenger start` in its own session and instance registry."""

    def __init__(self, app_root: Path = HELLO_APP, *args: str,
                 env: dict[str, str] | None = None, ask_root: bool = True) -> None:
        self.app_root = app_root
        self.args = list(args)
        if ask_root and os.geteuid() == 0 and "--user" not in self.args:
            # As root, app processes would run as the owner of passenger_wsgi.py, and
            # never as root unless asked: the tests ask, so they run as the developer does.
            self.args += ["--user", "root"]
        self.port = free_port()
        self.registry = Path(tempfile.mkdtemp(prefix=Path(REGISTRY_PREFIX).name, dir="/tmp"))
        self.registry.chmod(0o755)  # an app process of another user may need to pass
        self.log_file = self.registry / "passenger.log"
        self.pid_file = self.registry / "passenger.pid"
        self.pass_file_options = True  # False: Passenger's defaults (files in the app dir)
        self.output_path = self.registry / "console.out"
        self.env = {**os.environ, "PASSENGER_INSTANCE_REGISTRY_DIR": str(self.registry),
                    **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen_pids: set[int] = set()

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 20.0, wait_ready: bool = True) -> PassengerServer:
        self.output = open(self.output_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [str(BIN / "passenger"), "start", str(self.app_root), "--address", "127.0.0.1",
             "--port", str(self.port), *self.file_options(), *self.args],
            stdout=self.output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env, start_new_session=True)
        self.seen_pids.add(self.proc.pid)
        if wait_ready:
            wait_for(self._ready, timeout, interval=0.05, message="server answering")
        return self

    def file_options(self) -> list[str]:
        if not self.pass_file_options:
            self.log_file = self.app_root / f"passenger.{self.port}.log"
            self.pid_file = self.app_root / f"passenger.{self.port}.pid"
            return []
        return ["--log-file", str(self.log_file), "--pid-file", str(self.pid_file)]

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"passenger start exited with {self.proc.returncode}:\n"
                               f"{self.console()}")
        try:
            http_request(self.port, "/", timeout=2)
        except OSError:
            return False
        return self.instance_dir() is not None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL everything we ever saw; returns the exit status."""
        if self.proc is None:
            return None
        self.remember_descendants()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        for pid in self.seen_pids:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.output.close()
        if os.environ.get("PASSENGER_TEST_KEEP_LOGS") is None:
            shutil.rmtree(self.registry, ignore_errors=True)
        return self.proc.returncode

    def remember_descendants(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.seen_pids.add(child.pid)

    # -- inspection ------------------------------------------------------------------

    def console(self) -> str:
        return self.output_path.read_text(errors="replace")

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 5.0) -> None:
        """Log lines reach the file through the logging agent, a moment after the fact."""
        wait_for(lambda: text in self.log(), timeout, message=f"{text!r} in the log")

    def instance_dir(self) -> Path | None:
        found = [p for p in self.registry.glob("passenger.*")
                 if (p / "creation_finalized").exists()]
        return found[0] if found else None

    @property
    def watchdog_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def find_agent_pid(self, title: str) -> int | None:
        self.remember_descendants()
        for child in psutil.Process(self.watchdog_pid).children():
            with contextlib.suppress(psutil.Error):
                if has_passenger_title(child) and " ".join(child.cmdline()).startswith(title):
                    return int(child.pid)
        return None

    def agent_pid(self, title: str) -> int:
        pid = wait_for(lambda: self.find_agent_pid(title), 5, message=f"a running {title}")
        return int(pid)

    def run_tool(self, *argv: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True,
                              text=True, env=self.env, timeout=timeout, check=False)

    def status(self) -> dict[str, Any]:
        result = self.run_tool("passenger-status", "--show=json")
        assert result.returncode == 0, result.stderr
        pool: dict[str, Any] = json.loads(result.stdout)
        return pool

    def app_pids(self) -> list[int]:
        pids = [p["pid"] for g in self.status()["groups"] for p in g["processes"]
                if p["state"] == "enabled"]
        self.seen_pids.update(pids)
        return sorted(pids)

    def get(self, path: str = "/", **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        return http_request(self.port, path, **kwargs)


@contextlib.contextmanager
def running_server(app_root: Path = HELLO_APP, *args: str, start_timeout: float = 20.0,
                   **kwargs: Any) -> Iterator[PassengerServer]:
    server = PassengerServer(app_root, *args, **kwargs)
    try:
        yield server.start(timeout=start_timeout)
    finally:
        server.stop()


class RequestLoop:
    """A bounded client loop in a thread: at most `limit` requests (request i asks for
    `path(i)`), stops when told; records (i, status, body)."""

    def __init__(self, port: int, limit: int = 2000,
                 path: Callable[[int], str] = lambda i: "/", pause: float = 0.005) -> None:
        self.port = port
        self.limit = limit
        self.path = path
        self.pause = pause
        self.results: list[tuple[int, int, str]] = []
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for i in range(self.limit):
            if self.stop_flag.is_set():
                return
            try:
                status, _, body = http_request(self.port, self.path(i), timeout=10)
                self.results.append((i, status, body.decode(errors="replace")))
            except OSError as exc:
                self.results.append((i, 0, str(exc)))
            time.sleep(self.pause)

    def statuses(self) -> list[tuple[int, str]]:
        return [(status, body) for _, status, body in self.results]

    def __enter__(self) -> RequestLoop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_flag.set()
        self.thread.join(30)


@contextlib.contextmanager
def syscall_results(pid: int, syscall: str, trace: Path) -> Iterator[list[int]]:
    """strace `syscall` in process `pid` (and its threads) for the duration of the block;
    afterwards the list holds what each successful call returned (bytes moved)."""
    results: list[int] = []
    tracer = subprocess.Popen(["strace", "-f", "-e", f"trace={syscall}", "-o", str(trace),
                               "-p", str(pid)], stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # attached
        yield results
        time.sleep(0.3)  # the last calls written out
    finally:
        tracer.terminate()
        tracer.wait(10)
    for line in trace.read_text().splitlines():
        returned = line.rsplit("= ", 1)[-1].split()[0]
        if f"{syscall}(" in line and returned.isdigit():
            results.append(int(returned))
