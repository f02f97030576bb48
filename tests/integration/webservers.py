"""Real nginx and Apache for integration tests: each on a free 127.0.0.1 port, with its
own config, pid and log files in a short temporary directory, stopped (and its whole
process group killed and reaped) however the test ends.

Both run in the foreground (`daemon off;`, `-DFOREGROUND`) so that the process we start
is the master: its PID, and its workers' PPID, are known without reading a pid file.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from support import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
APACHE = shutil.which("apache2") or "/usr/sbin/apache2"
APACHE_MODULES = Path("/usr/lib/apache2/modules")


def installed(binary: str) -> bool:
    return os.access(binary, os.X_OK)


class WebServer:
    """A foreground web server master plus `workers` children, in its own session."""

    def __init__(self, name: str, workers: int) -> None:
        self.name = name
        self.workers = workers
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"{name[:2]}.", dir="/tmp"))
        os.chmod(self.dir, 0o755)  # workers run as nobody and must reach their files
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 15.0) -> WebServer:
        log = open(self.dir / "console.log", "wb")  # noqa: SIM115 (Popen keeps a copy)
        with log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while not (self._listening() and len(self.worker_pids()) >= self.workers):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   f"{self.console()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} not ready within {timeout} s:\n"
                                   f"{self.console()}")
            time.sleep(0.05)
        return self

    def _listening(self) -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    @property
    def master_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        try:
            return sorted(c.pid for c in psutil.Process(self.master_pid).children())
        except psutil.NoSuchProcess:
            return []

    def console(self) -> str:
        text = ""
        for log in sorted(self.dir.glob("*.log")):
            text += f"--- {log.name}\n{log.read_text(errors='replace')}"
        return text

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the master, then SIGKILL whatever is left of its process group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        # Workers are the master's children: once it is gone, init reaps them. Wait
        # (bounded) until none of the group is left, so the next test sees a clean table.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _group_alive(self.proc.pid):
            time.sleep(0.02)
        shutil.rmtree(self.dir, ignore_errors=True)


def _group_alive(pgid: int) -> bool:
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
    return False


class Nginx(WebServer):
    def __init__(self, workers: int = 2) -> None:
        super().__init__("nginx", workers)

    def server_block(self) -> str:
        return f"""\
    server {{
        listen 127.0.0.1:{self.port};
        location / {{ return 200 "nginx\\n"; }}
    }}"""

    def command(self) -> list[str]:
        d = self.dir
        (d / "nginx.conf").write_text(f"""\
daemon off;
master_process on;
worker_processes {self.workers};
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{self.server_block()}
}}
""")
        return [NGINX, "-p", str(d), "-c", str(d / "nginx.conf")]


class TlsProxy(Nginx):
    """nginx terminating TLS in front of an upstream on 127.0.0.1, configured as real
    deployments are (Host, X-Forwarded-For, X-Forwarded-Proto); its certificate is
    self-signed, made here with openssl, for 127.0.0.1."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(workers=1)
        self.upstream_port = upstream_port
        self.certificate = self.dir / "cert.pem"
        self.key = self.dir / "key.pem"

    def server_block(self) -> str:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
             "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(self.key), "-out", str(self.certificate)],
            check=True, capture_output=True, timeout=30)
        return f"""\
    server {{
        listen 127.0.0.1:{self.port} ssl;
        ssl_certificate {self.certificate};
        ssl_certificate_key {self.key};
        location / {{
            proxy_pass http://127.0.0.1:{self.upstream_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}"""

    def client(self) -> http.client.HTTPSConnection:
        context = ssl.create_default_context(cafile=str(self.certificate))
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=context,
                                           timeout=15)


class Apache(WebServer):
    def __init__(self, workers: int = 2) -> None:
        super().__init__("apache2", workers)

    def command(self) -> list[str]:
        d = self.dir
        (d / "apache2.conf").write_text(f"""\
ServerRoot {d}
ServerName 127.0.0.1
Listen 127.0.0.1:{self.port}
LoadModule mpm_prefork_module {APACHE_MODULES}/mod_mpm_prefork.so
LoadModule authz_core_module {APACHE_MODULES}/mod_authz_core.so
User nobody
Group nogroup
PidFile {d}/apache2.pid
ErrorLog {d}/error.log
Mutex file:{d}
DocumentRoot {d}
StartServers {self.workers}
MinSpareServers {self.workers}
MaxSpareServers {self.workers}
MaxRequestWorkers {self.workers + 2}
""")
        return [APACHE, "-f", str(d / "apache2.conf"), "-DFOREGROUND"]


@contextlib.contextmanager
def running(server: WebServer) -> Iterator[WebServer]:
    try:
        yield server.start()
    finally:
        server.stop()
