"""The servers under test, behind one small interface, so every measurement treats ours
and the peers the same way.

Each server runs 2 processes of the app it is given (hello, django or bigbody, see
appsetup.py) on 127.0.0.1, in its own work directory and instance registry, with a
private environment tag (see procs.py) so that `stop()` can always find and end
everything it started, daemonized children included.

Roles of processes: `agent` (what the server runs besides the app: our watchdog, helper
agent and logging agent; Passenger's watchdog, core and temp-dir toucher; gunicorn's and
uWSGI's master), `app`, `preloader` (ours: the process apps are forked from; app-side,
not an agent) and `launcher` (Passenger's ruby `passenger start` and its `tail`, which
exist only in its foreground mode: listed apart, never counted).
"""

from __future__ import annotations

import abc
import base64
import contextlib
import functools
import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from benchmarks import procs

APP_PROCESSES = 2
# Labels of the servers in reports (a --baseline run adds "ours@GIT_REF").
OURS = "ours"
GUNICORN = "gunicorn-sync"
GTHREAD = "gunicorn-gthread"
UWSGI = "uwsgi"
PASSENGER = "passenger"
REAL_PASSENGER = "/usr/bin/passenger"            # Debian's: same command name as ours
REAL_PASSENGER_CONFIG = "/usr/bin/passenger-config"


@dataclass
class ProcInfo:
    """One process of a server: `role` is agent, app, or launcher (not part of the server
    proper: Passenger's ruby `passenger start` and its `tail`)."""

    role: str
    name: str
    pid: int


class Server(abc.ABC):
    """A server under test. Subclasses say how to start it and how to see its processes."""

    kind: ClassVar[str]
    # The process that fronts requests (what `kill_front()` kills and whose CPU per
    # request is measured): a ProcInfo name, None when the app processes accept
    # connections themselves (gunicorn, uWSGI --http-socket).
    front_name: ClassVar[str | None] = None
    serves_static: ClassVar[bool] = False   # answers APP_DIR/public/* without the app
    restart_name: ClassVar[str] = "restart"

    def __init__(self, label: str, workdir: Path, app_dir: Path, tag: str,
                 python: str) -> None:
        self.label = label
        self.app_dir = app_dir
        self.python = python
        self.port = procs.free_port()
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tag = tag
        self.proc: subprocess.Popen[bytes] | None = None
        self.console = self.workdir / "console.out"
        self.started_at = 0.0
        self.seen: dict[int, int | None] = {}   # pid -> start time

    # -- lifecycle -------------------------------------------------------------------

    @abc.abstractmethod
    def command(self) -> list[str]: ...

    def env(self) -> dict[str, str]:
        return {**os.environ, procs.TAG_VAR: self.tag, "TMPDIR": str(self.workdir)}

    def cwd(self) -> Path:
        return self.app_dir

    def start(self) -> None:
        with open(self.console, "ab") as out:
            self.started_at = time.perf_counter()
            self.proc = subprocess.Popen(self.command(), cwd=self.cwd(), env=self.env(),
                                         stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until `GET /` answers 200 and the server's own view lists both app processes."""
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode}:\n"
                                   f"{self.tail_console()}")
            return procs.http_status(self.port, timeout=2) == 200 and \
                len(self.pool_pids() or []) >= APP_PROCESSES
        procs.wait_for(ready, timeout, interval=0.05, what=f"{self.label} ready")
        self.remember()

    def remember(self) -> None:
        """Note every process of ours now alive: titles may hide our environment tag."""
        pids = {p.pid for p in self.processes()}
        if self.proc is not None:
            pids |= {self.proc.pid} | procs.descendants(self.proc.pid)
        for pid in pids - set(self.seen):
            self.seen[pid] = procs.start_time(pid)

    def known_alive(self) -> list[int]:
        """Every live process this server started, as far as we can know (a remembered
        pid counts only while it still names the same process)."""
        pids = {p for p, started in self.seen.items() if procs.start_time(p) == started}
        pids |= set(procs.tagged_pids(self.tag))
        if self.proc is not None and self.proc.poll() is None:
            pids |= {self.proc.pid} | procs.descendants(self.proc.pid)
        return sorted(p for p in pids if procs.is_alive(p))

    def stop(self, timeout: float = 20.0) -> float:
        """Stop as its users would, then SIGKILL whatever carries our tag; returns how long
        the graceful part took (s), or -1 when it had to be forced."""
        self.remember()
        t0 = time.perf_counter()
        forced = False
        try:
            self._graceful_stop(timeout)
            procs.wait_for(self._server_gone, timeout, 0.01, f"{self.label} stopped")
        except TimeoutError:
            forced = True
        elapsed = time.perf_counter() - t0
        if self.proc is not None:   # a launcher gets a short grace, then goes anyway
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(3)
        procs.kill_all(self.known_alive())
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        return -1.0 if forced else elapsed

    def _server_gone(self) -> bool:
        """Every process of the server has exited (zombies count as exited)."""
        return not [p for p in self.known_alive() if not self._is_launcher(p)]

    def _is_launcher(self, pid: int) -> bool:
        return False

    def _graceful_stop(self, timeout: float) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def tail_console(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.console.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- what runs -------------------------------------------------------------------

    @abc.abstractmethod
    def processes(self) -> list[ProcInfo]: ...

    def app_pids(self) -> list[int]:
        return [p.pid for p in self.processes() if p.role == "app"]

    def pool_pids(self) -> list[int] | None:
        """The app processes the server itself counts as ready; None if it cannot say."""
        return self.app_pids()

    def kill_front(self) -> int | None:
        """SIGKILL the process that fronts requests and owns the apps (helper agent,
        Passenger core); returns its pid, or None when the server has no such process."""
        return None

    def restart_app(self) -> str | None:
        """Ask for all app processes to be replaced; None if the server cannot, else how."""
        return None


def _children_named(pid: int, *prefixes: str) -> list[int]:
    return [c for c in procs.children(pid)
            if any(p in procs.cmdline(c) for p in prefixes)]


class OurServer(Server):
    kind = "ours"
    front_name = "helper agent"
    serves_static = True
    restart_name = "passenger-config restart-app"

    def __init__(self, label: str, workdir: Path, app_dir: Path, tag: str, python: str,
                 bin_dir: Path) -> None:
        super().__init__(label, workdir, app_dir, tag, python)
        self.bin_dir = bin_dir
        self.registry = self.workdir / "reg"
        self.registry.mkdir(exist_ok=True)

    def command(self) -> list[str]:
        return [str(self.bin_dir / "passenger"), "start", str(self.app_dir),
                "--address", "127.0.0.1", "--port", str(self.port),
                "--min-instances", str(APP_PROCESSES), "--max-pool-size", str(APP_PROCESSES),
                "--environment", "production", "--python", self.python,
                "--log-file", str(self.workdir / "passenger.log"),
                # As the peers do: apps run as the user running the benchmark (as root,
                # ours would otherwise run them as the owner of passenger_wsgi.py).
                "--user", pwd.getpwuid(os.geteuid()).pw_name]

    def env(self) -> dict[str, str]:
        return {**super().env(), "PASSENGER_INSTANCE_REGISTRY_DIR": str(self.registry)}

    def _watchdog(self) -> int | None:
        # `passenger start` execs the watchdog, so the launcher pid is the watchdog's.
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def processes(self) -> list[ProcInfo]:
        watchdog = self._watchdog()
        if watchdog is None:
            return []
        out = [ProcInfo("agent", "watchdog", watchdog)]
        for agent in procs.children(watchdog):
            title = procs.cmdline(agent)
            if "PassengerHelperAgent" in title:
                out.append(ProcInfo("agent", "helper agent", agent))
                for app in procs.children(agent):
                    app_title = procs.cmdline(app)
                    if app_title.startswith("Passenger AppPreloader"):
                        out.append(ProcInfo("preloader", "preloader", app))
                    elif procs.is_alive(app):
                        out.append(ProcInfo("app", "app", app))
            elif "PassengerLoggingAgent" in title:
                out.append(ProcInfo("agent", "logging agent", agent))
        return out

    def _admin_socket(self) -> Path | None:
        for inst in self.registry.glob("passenger.*"):
            if (inst / "creation_finalized").exists() and (inst / "admin.sock").exists():
                return inst / "admin.sock"
        return None

    def pool_pids(self) -> list[int] | None:
        sock_path = self._admin_socket()
        if sock_path is None:
            return None
        try:
            pool = _unix_http_json(sock_path, "/pool.json")
        except (OSError, ValueError, http.client.HTTPException):
            return None
        return sorted(p["pid"] for g in pool.get("groups", []) for p in g.get("processes", [])
                      if p.get("state") == "enabled")

    def kill_front(self) -> int | None:
        helper = next((p.pid for p in self.processes() if p.name == "helper agent"), None)
        if helper is not None:
            procs.kill_all([helper])
        return helper

    def restart_app(self) -> str | None:
        """`passenger-config restart-app APP_DIR`: Passenger's blocking restart (every
        process shuts down gracefully and fresh ones spawn); it returns once asked."""
        subprocess.run([str(self.bin_dir / "passenger-config"), "restart-app",
                        str(self.app_dir)], capture_output=True, env=self.env(), timeout=30,
                       check=True)
        return self.restart_name


class PreforkServer(Server):
    """A master that forks its workers and reloads them all on SIGHUP (gunicorn, uWSGI)."""

    def processes(self) -> list[ProcInfo]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        out = [ProcInfo("agent", "master", self.proc.pid)]
        out += [ProcInfo("app", "worker", c) for c in procs.children(self.proc.pid)
                if procs.is_alive(c)]
        return out

    def restart_app(self) -> str | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGHUP)  # a graceful reload of every worker
        return "kill -HUP master"


class GunicornServer(PreforkServer):
    kind = "gunicorn"
    restart_name = "kill -HUP master"

    def __init__(self, label: str, workdir: Path, app_dir: Path, tag: str, python: str,
                 bin_dir: Path, worker_args: list[str]) -> None:
        super().__init__(label, workdir, app_dir, tag, python)
        self.bin_dir = bin_dir
        self.worker_args = worker_args

    def command(self) -> list[str]:
        return [self.python, str(self.bin_dir / "gunicorn"), "-w", str(APP_PROCESSES),
                *self.worker_args, "-b", f"127.0.0.1:{self.port}", "--chdir",
                str(self.app_dir), "passenger_wsgi:application"]



class UwsgiServer(PreforkServer):
    """uWSGI from PyPI, the "C speed" reference: 2 preforked processes answering HTTP
    themselves (--http-socket, no router process in between).

    --http-socket closes the connection after every response (as gunicorn's sync worker
    does); `Connection: close` is added so that clients know and reconnect instead of
    counting a read error. (--http11-socket would keep connections open, but then each
    of the 2 processes serves one connection at a time and the other 62 of a `wrk -c64`
    run never get an answer.) --die-on-term makes SIGTERM stop it (its default is a
    reload); --virtualenv points its embedded Python at the interpreter's environment.
    """

    kind = "uwsgi"
    restart_name = "kill -HUP master"

    def __init__(self, label: str, workdir: Path, app_dir: Path, tag: str, python: str,
                 bin_dir: Path) -> None:
        super().__init__(label, workdir, app_dir, tag, python)
        self.bin_dir = bin_dir

    def command(self) -> list[str]:
        return [str(self.bin_dir / "uwsgi"), "--http-socket", f"127.0.0.1:{self.port}",
                "--processes", str(APP_PROCESSES), "--master", "--chdir", str(self.app_dir),
                "--wsgi-file", "passenger_wsgi.py", "--callable", "application",
                "--disable-logging", "--die-on-term", "--add-header", "Connection: close",
                "--virtualenv", python_prefix(self.python)]



class RealPassenger(Server):
    """Phusion Passenger 6 from Debian, builtin engine, in the foreground."""

    kind = "passenger"
    front_name = "core"
    # Its builtin engine passes APP_DIR/public/* to the app (checked: the app's own 404
    # comes back); bigbody.py still asks, and measures it if that ever changes.
    serves_static = False
    restart_name = "passenger-config restart-app"

    def __init__(self, label: str, workdir: Path, app_dir: Path, tag: str,
                 python: str) -> None:
        super().__init__(label, workdir, app_dir, tag, python)
        self.registry = self.workdir / "reg"
        self.registry.mkdir(exist_ok=True)

    def command(self) -> list[str]:
        return [REAL_PASSENGER, "start", "--engine=builtin", "--port", str(self.port),
                "--address", "127.0.0.1", "--min-instances", str(APP_PROCESSES),
                "--max-pool-size", str(APP_PROCESSES), "--environment", "production",
                "--python", self.python, "--disable-security-update-check",
                "--disable-anonymous-telemetry",
                "--log-file", str(self.workdir / "passenger.log"),
                "--pid-file", str(self.workdir / "passenger.pid")]

    def env(self) -> dict[str, str]:
        return {**super().env(), "PASSENGER_INSTANCE_REGISTRY_DIR": str(self.registry)}

    def _instance(self) -> Path | None:
        for inst in self.registry.glob("passenger.*"):
            if (inst / "creation_finalized").exists():
                return inst
        return None

    def _pid_file(self, name: str) -> int | None:
        inst = self._instance()
        if inst is None:
            return None
        try:
            pid = int((inst / name).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if procs.is_alive(pid) else None

    def processes(self) -> list[ProcInfo]:
        out: list[ProcInfo] = []
        watchdog = self._pid_file("watchdog.pid")
        core = self._pid_file("core.pid")
        if watchdog is not None:
            out.append(ProcInfo("agent", "watchdog", watchdog))
        if core is not None:
            out.append(ProcInfo("agent", "core", core))
            out += [ProcInfo("app", "app", c) for c in procs.children(core)
                    if procs.is_alive(c)]
        known = {p.pid for p in out}
        for pid in procs.tagged_pids(self.tag):
            if pid in known:
                continue
            title = procs.cmdline(pid)
            if "temp-dir-toucher" in title:
                out.append(ProcInfo("agent", "temp-dir-toucher", pid))
            elif "wsgi-loader" not in title:   # a dying core's app: not listed
                out.append(ProcInfo("launcher", title.split(" ")[0], pid))
        return out

    def pool_pids(self) -> list[int] | None:
        inst = self._instance()
        if inst is None:
            return None
        try:
            password = (inst / "read_only_admin_password.txt").read_text().strip()
            xml = _unix_http(inst / "agents.s" / "core_api", "/pool.xml",
                             auth=("ro_admin", password))
            root = ET.fromstring(xml)
        except (OSError, ET.ParseError, http.client.HTTPException):
            return None
        return sorted(int(p.findtext("pid") or 0) for p in root.iter("process")
                      if p.findtext("life_status") == "ALIVE"
                      and p.findtext("enabled") == "ENABLED")

    def _graceful_stop(self, timeout: float) -> None:
        # Ctrl-C is how its foreground mode stops; SIGTERM would only end the ruby launcher.
        # The launcher then waits until the watchdog's pid is gone, which a zombie never is
        # where PID 1 does not reap (as on this VM): so we wait for the server processes,
        # not for the launcher (stop() ends a launcher that lingers).
        # Ctrl-C alone sometimes left the watchdog running for 20 s and more here, so the
        # watchdog also gets SIGTERM, its documented stop signal (it takes its core,
        # apps and temp-dir toucher down with it).
        watchdog = self._pid_file("watchdog.pid")
        if watchdog is not None:
            procs.kill_all([watchdog], signal.SIGTERM)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def _is_launcher(self, pid: int) -> bool:
        """The ruby launcher, its `tail`, and the temp-dir toucher: the launcher starts
        the toucher (for its own working dir) after the watchdog and gives the watchdog
        its pid file to clean up; stopped soon after a start, the toucher here often
        outlives the rest by 20 s and more (the watchdog has not ended it), so a stop is
        timed until the watchdog, core and apps have exited, and stop() ends the toucher
        as it does any leftover."""
        title = procs.cmdline(pid)
        return (self.proc is not None and pid == self.proc.pid) or \
            title.startswith(("sh -c tail", "tail ")) or "temp-dir-toucher" in title

    def kill_front(self) -> int | None:
        core = self._pid_file("core.pid")
        if core is not None:
            procs.kill_all([core])
        return core

    def restart_app(self) -> str | None:
        subprocess.run([REAL_PASSENGER_CONFIG, "restart-app", str(self.app_dir)],
                       capture_output=True, env=self.env(), timeout=30, check=True)
        return "passenger-config restart-app"


def _unix_http(path: Path, url: str, auth: tuple[str, str] | None = None,
               timeout: float = 5.0) -> bytes:
    """One GET over a Unix socket; our admin API and Passenger's core API both speak HTTP."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    conn = http.client.HTTPConnection("localhost", timeout=timeout)
    try:
        sock.connect(str(path))
        conn.sock = sock
        headers = {}
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        conn.request("GET", url, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise http.client.HTTPException(f"{url}: HTTP {resp.status}")
        return body
    finally:
        conn.close()
        sock.close()


def _unix_http_json(path: Path, url: str) -> Any:
    return json.loads(_unix_http(path, url))


def have_real_passenger() -> bool:
    return Path(REAL_PASSENGER).exists() and shutil.which("ruby") is not None


def default_python() -> str:
    """Every server runs its app on this interpreter, so only the servers differ."""
    return sys.executable


@functools.cache
def python_prefix(python: str) -> str:
    """sys.prefix of `python` (its venv), for servers that embed their own Python."""
    return subprocess.run([python, "-c", "import sys; print(sys.prefix)"], check=True,
                          capture_output=True, text=True, timeout=30).stdout.strip()
