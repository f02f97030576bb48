"""PassengerHelperAgent entry point: read the startup document, serve, shut down cleanly.

Started by the watchdog, which passes the listening socket (so connections wait in its
backlog while a helper agent is being restarted) and keeps our stdin as a lifeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys

from passenger.common.config import ServerConfig
from passenger.common.log_handler import LogLineHandler
from passenger.common.log_records import LogLineWriter
from passenger.common.owned_instance_dir import InstancePaths
from passenger.common.process_title import HELPER_AGENT, set_title
from passenger.common.startup_protocol import read_startup_document, report_error, report_ready
from passenger.helper_agent.admin_api import AdminConnection, Handler, admin_routes
from passenger.helper_agent.front_end import FrontEnd, raise_descriptor_limit
from passenger.helper_agent.http_front import HttpConnection
from passenger.helper_agent.metrics_server import MetricsServer
from passenger.helper_agent.pool import Pool

log = logging.getLogger("passenger.helper_agent.main")
APP_STOP_TIMEOUT = 5.0  # after in-flight requests: SIGTERM, then SIGKILL after this
ORPHAN_STOP_TIMEOUT = 1.0  # when the watchdog is gone: be quick
LOG_FLUSH_INTERVAL = 0.2
PR_SET_CHILD_SUBREAPER = 36


class HelperAgent:
    def __init__(self, doc: dict[str, object]) -> None:
        self.config = ServerConfig.from_json(doc["config"])  # type: ignore[arg-type]
        self.doc = doc
        self.instance = InstancePaths(str(doc["instance_dir"]))
        self.listen_fd = int(doc["listen_fd"])  # type: ignore[call-overload]
        self.feedback_fd = int(doc["feedback_fd"])  # type: ignore[call-overload]
        self.log_writer = LogLineWriter(str(self.instance.logging_fifo), name="main log")
        self.stop_reason = ""
        self.notes = b""  # a partial note line from the watchdog
        self.stopped: asyncio.Event | None = None

    def configure_logging(self) -> None:
        root = logging.getLogger()
        root.handlers[:] = [LogLineHandler(self.log_writer)]
        root.setLevel(self.config.log_level.upper())

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.stopped = asyncio.Event()
        access_log = (LogLineWriter(str(self.instance.access_fifo), name="access log",
                                    notices=self.log_writer)
                      if self.config.access_log else None)
        pool = Pool(self.config, self.instance.apps_dir, self.log_writer,
                    self.instance.properties_name(), access_log)
        self._clear_apps_dir()
        front = FrontEnd(pool, self.config, self._clear_buffers_dir(), access_log)
        front.serve(socket.socket(fileno=self.listen_fd), lambda: HttpConnection(front))
        admin_path = str(self.instance.admin_socket)
        admin = await self._serve_admin(admin_path, admin_routes(pool, front))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, f"signal {sig.name}")
        loop.add_reader(sys.stdin.fileno(), self._check_lifeline, pool)
        flusher = loop.create_task(self._flush_logs(access_log))
        problems = [why for group in pool.groups if (why := group.spawner.preflight())]
        if problems:
            report_error(self.feedback_fd, problems[0])
            return 1
        metrics = None
        if doc_metrics_fd := self.doc.get("metrics_fd"):
            metrics = MetricsServer(socket.socket(fileno=int(str(doc_metrics_fd))), pool,
                                    front)
            metrics.start()
        pool.start()
        report_ready(self.feedback_fd, admin_socket=admin_path, pid=os.getpid())
        log.info("Helper agent online, PID %d, serving %s (event loop: %s)", os.getpid(),
                 self.config.app_root, type(loop).__module__.split(".")[0])

        await self.stopped.wait()
        log.info("Helper agent shutting down (%s)", self.stop_reason)
        front.close()  # from now on /readyz says so
        admin.close()
        await self._stop_apps(pool)
        flusher.cancel()
        if metrics is not None:
            await loop.run_in_executor(None, metrics.stop)
        if access_log is not None:
            access_log.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(admin_path)
        log.info("Helper agent stopped")
        self.log_writer.close()
        return 0

    def _clear_apps_dir(self) -> None:
        """App sockets left by an earlier helper agent go; the directory is ours alone."""
        apps = self.instance.apps_dir
        for name in os.listdir(apps):
            if name.startswith("wsgi."):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(apps, name))
        os.chmod(apps, 0o700)  # app sockets: ours alone (see Spawner)

    def _clear_buffers_dir(self) -> str:
        """The directory for request and response buffers, made empty. -> its path."""
        buffers = self.instance.buffers_dir
        with contextlib.suppress(FileExistsError):
            os.mkdir(buffers, 0o700)
        for name in os.listdir(buffers):  # bodies are unlinked files; anything else is old
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(buffers, name))
        return buffers

    async def _serve_admin(self, admin_path: str,
                           routes: dict[tuple[bytes, bytes], Handler]) -> asyncio.Server:
        """The admin API on its Unix socket, readable and writable by us alone."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(admin_path)
        old_umask = os.umask(0o177)
        try:
            return await asyncio.get_running_loop().create_unix_server(
                lambda: AdminConnection(routes), admin_path)
        finally:
            os.umask(old_umask)

    async def _stop_apps(self, pool: Pool) -> None:
        """At once when the watchdog is gone; else after the requests in flight, for at
        most --graceful-timeout."""
        if self.stop_reason == "lifeline":
            log.warning("The watchdog is gone; stopping every app process now")
            await pool.stop(ORPHAN_STOP_TIMEOUT)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.graceful_timeout
        while pool.busy_sessions() and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if pool.busy_sessions():
            log.warning("%d requests still running after --graceful-timeout %d s; "
                        "stopping their processes", pool.busy_sessions(),
                        self.config.graceful_timeout)
        await pool.stop(APP_STOP_TIMEOUT)

    def _request_stop(self, reason: str) -> None:
        if not self.stop_reason and self.stopped is not None:
            self.stop_reason = reason
            self.stopped.set()

    def _check_lifeline(self, pool: Pool) -> None:
        """EOF: the watchdog is gone. A line: a note from it (see startup_protocol)."""
        data = os.read(sys.stdin.fileno(), 4096)
        if not data:
            asyncio.get_running_loop().remove_reader(sys.stdin.fileno())
            self._request_stop("lifeline")
            return
        self.notes += data
        *lines, self.notes = self.notes.split(b"\n")
        for line in lines:
            with contextlib.suppress(ValueError):
                note = json.loads(line)
                dropped = note.get("watchdog_log_lines_dropped") if isinstance(note, dict) else None
                if isinstance(dropped, int):
                    pool.watchdog_log_lines_dropped = dropped

    async def _flush_logs(self, access_log: LogLineWriter | None) -> None:
        """Deliver lines buffered while a logging pipe was full."""
        writers = [w for w in (self.log_writer, access_log) if w is not None]
        while True:
            await asyncio.sleep(LOG_FLUSH_INTERVAL)
            for writer in writers:
                if writer.pending or writer.dropped:
                    writer.flush()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (and not turned off with PASSENGER_EVENT_LOOP=asyncio)."""
    if os.environ.get("PASSENGER_EVENT_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            pass
    return asyncio.new_event_loop()


def become_subreaper() -> None:
    """Workers forked by a preloader are orphaned on purpose (double fork) and adopted by
    us, so we can wait for them and see how they ended."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("Cannot become a child subreaper (errno %d): exit statuses of "
                    "smart-spawned processes will be unknown", ctypes.get_errno())


def main() -> None:
    set_title(HELPER_AGENT)
    doc = read_startup_document()
    agent = HelperAgent(doc)
    agent.configure_logging()
    become_subreaper()
    raise_descriptor_limit()
    loop = new_event_loop()
    try:
        code = loop.run_until_complete(agent.run())
    except Exception as exc:
        log.exception("Helper agent failed")
        with contextlib.suppress(OSError):
            report_error(agent.feedback_fd, f"helper agent failed: {exc}")
        agent.log_writer.close()
        code = 1
    finally:
        loop.close()
    sys.exit(code)


if __name__ == "__main__":
    main()
