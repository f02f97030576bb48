"""What every client connection shares, and what watches over all of them: the settings,
accepting new clients within the descriptor limit, and the timeouts.

Accepting is ours, not the event loop's: at `--max-connections` (by default what the
descriptor limit allows after a reserve) new clients wait in the listen backlog instead of
being reset, and a failed accept (EMFILE under a limit lowered at run time) pauses
accepting for a second, frees a few reserved descriptors so that spawning, logging and
`passenger-status` still work, and is logged with a count, at most once a second.

Timeouts have nginx's names and meanings. Each connection keeps a read deadline and a
write deadline (plain numbers, set as it goes); one sweep a fraction of the shortest
timeout acts on those that passed, so no timer is set per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import gc
import logging
import os
import resource
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from passenger.common import SERVER_SOFTWARE
from passenger.common.config import ServerConfig
from passenger.common.log_records import LogLineWriter
from passenger.helper_agent.forwarded import TrustedProxies
from passenger.helper_agent.http_parser import Limits
from passenger.helper_agent.metrics import RequestMetrics
from passenger.helper_agent.request_status import describe

if TYPE_CHECKING:
    from collections.abc import Collection

    from passenger.helper_agent.pool import Pool
    from passenger.helper_agent.proxied_request import Request

log = logging.getLogger(__name__)
RESERVED_FDS = 128        # never taken by client connections
SPARE_FDS = 16            # held open, let go when accepting fails for want of descriptors
ACCEPT_BATCH = 64         # accepts per readiness event
ACCEPT_RETRY = 1.0        # seconds accepting pauses after EMFILE and the like
OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


try:
    _libc: ctypes.CDLL | None = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: no malloc_trim
    _libc = None


def raise_descriptor_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit, as nginx's worker_rlimit_nofile; -> it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def descriptors_in_use() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


class HttpConnection(Protocol):
    """What the front end needs of a client connection (`http_front.HttpConnection`,
    which in turn uses the front end: this keeps the import one way)."""

    read_deadline: float
    write_deadline: float

    @property
    def requests(self) -> Collection[Request]: ...

    def read_timed_out(self) -> None: ...
    def send_timed_out(self) -> None: ...


class FrontEnd:
    def __init__(self, pool: Pool, config: ServerConfig, buffer_dir: str,
                 access_log: LogLineWriter | None = None) -> None:
        self.pool = pool
        self.access_log = access_log
        self.limits = Limits(config.limit_request_line, config.limit_request_fields,
                             config.limit_request_field_size)
        self.proxies = TrustedProxies(config.forwarded_allow_ips)
        self.server_header = (b"Server: " + SERVER_SOFTWARE.encode() + b"\r\n"
                              if config.server_header else b"")
        self.buffer_dir = buffer_dir
        self.request_buffering = config.request_buffering
        self.max_body_size = config.client_max_body_size * 1024 * 1024
        self.header_timeout = float(config.client_header_timeout)
        self.body_timeout = float(config.client_body_timeout)
        self.send_timeout = float(config.send_timeout)
        self.keepalive_timeout = float(config.keepalive_timeout)
        self.keepalive = config.keepalive_timeout > 0
        self.configured_max_connections = config.max_connections
        self.connections: set[HttpConnection] = set()
        self.max_connections = self._max_connections()
        self.listener: socket.socket | None = None
        self.accepting = False
        self.closed = False
        self.accept_failures = 0      # since the last report
        self.accept_reported = 0.0    # when the last report was logged
        self.spares: list[int] = []
        self.sweeper: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connection: Callable[[], asyncio.Protocol] | None = None
        self.peak_connections = 0  # since memory was last given back
        self.started = time.time()
        self.clients_accepted = 0
        self.requests_begun = 0
        self.unrouted = RequestMetrics()  # requests no app took (404, bad heads)
        self.most_connections = 0  # ever at once

    # -- accepting ------------------------------------------------------------------

    def serve(self, listener: socket.socket,
              connection: Callable[[], asyncio.Protocol]) -> None:
        """Accept clients on `listener`, each served by a new `connection()`."""
        self.connection = connection
        self.loop = asyncio.get_running_loop()
        listener.setblocking(False)
        self.listener = listener
        self._hold_spares()
        self._resume_accepting()
        self.sweeper = self.loop.create_task(self._sweep())
        log.info("Accepting up to %d client connections (--max-connections%s)",
                 self.max_connections, "" if self.configured_max_connections
                 else ": what the descriptor limit allows")

    def close(self) -> None:
        """Accept no more clients (those connected are served on)."""
        self.closed = True
        self._pause_accepting()
        if self.sweeper is not None:
            self.sweeper.cancel()
        self._release_spares()

    def _resume_accepting(self) -> None:
        if not self.accepting and not self.closed and self.listener is not None \
                and self.loop is not None and len(self.connections) < self.max_connections:
            self.loop.add_reader(self.listener.fileno(), self._accept)
            self.accepting = True

    def _pause_accepting(self) -> None:
        if self.accepting and self.listener is not None and self.loop is not None:
            self.loop.remove_reader(self.listener.fileno())
            self.accepting = False

    def _accept(self) -> None:
        assert self.listener is not None and self.loop is not None
        for _ in range(ACCEPT_BATCH):
            if len(self.connections) + len(self.tasks) >= self.max_connections:
                self._pause_accepting()  # the rest wait in the backlog
                return
            try:
                client, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in OUT_OF_RESOURCES:
                    self._accept_failed(exc)
                    return
                continue  # ECONNABORTED and the like: that client is gone already
            client.setblocking(False)
            if client.family != socket.AF_UNIX:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = self.loop.create_task(self._connect(client))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _connect(self, client: socket.socket) -> None:
        assert self.loop is not None and self.connection is not None
        try:
            await self.loop.connect_accepted_socket(self.connection, client)
        except OSError as exc:
            client.close()
            if exc.errno in OUT_OF_RESOURCES:
                self._accept_failed(exc)

    def _accept_failed(self, exc: OSError) -> None:
        """Out of descriptors (or memory): the client waits in the backlog, spawning and
        the admin socket get the spare descriptors, and the log says so once a second."""
        assert self.loop is not None
        self.accept_failures += 1
        self._release_spares()
        self._pause_accepting()
        self.loop.call_later(ACCEPT_RETRY, self._resume_accepting)
        now = time.monotonic()
        if now - self.accept_reported >= 1.0:
            log.error("%d accept(s) of new clients failed since the last report: %s; they "
                      "wait in the backlog (%d connections open; raise the descriptor "
                      "limit or lower --max-connections)", self.accept_failures,
                      exc.strerror, len(self.connections))
            self.accept_failures = 0
            self.accept_reported = now

    def _hold_spares(self) -> None:
        while len(self.spares) < SPARE_FDS:
            try:
                self.spares.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return

    def _release_spares(self) -> None:
        for fd in self.spares:
            os.close(fd)
        self.spares.clear()

    def connection_opened(self, conn: HttpConnection) -> None:
        self.connections.add(conn)
        self.clients_accepted += 1
        if len(self.connections) > self.most_connections:
            self.most_connections = len(self.connections)

    def connection_closed(self, conn: HttpConnection) -> None:
        self.connections.discard(conn)
        if not self.accepting and len(self.connections) < self.max_connections:
            self._resume_accepting()

    def _give_memory_back(self) -> None:
        """After a crowd of connections has gone, hand the freed memory back to the
        system: free()d heap stays with the process otherwise."""
        count = len(self.connections)
        if count > self.peak_connections:
            self.peak_connections = count
        elif self.peak_connections >= 2 * count + 256:
            self.peak_connections = count
            gc.collect()
            if _libc is not None:
                _libc.malloc_trim(0)

    def _max_connections(self) -> int:
        """What the descriptor limit allows after the reserve (and --max-connections)."""
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        others = descriptors_in_use() - len(self.connections)
        room = max(16, soft - others - RESERVED_FDS)
        configured = self.configured_max_connections
        return min(configured, room) if configured else room

    # -- timeouts -------------------------------------------------------------------

    async def _sweep(self) -> None:
        """Act on the deadlines that passed; the descriptor limit is read again too (it
        may be lowered while we run)."""
        tick = min(1.0, max(0.05, min(self.header_timeout, self.body_timeout,
                                      self.send_timeout,
                                      self.keepalive_timeout or 60.0) / 8))
        loop = asyncio.get_running_loop()
        next_limits = 0.0
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for conn in list(self.connections):
                if conn.read_deadline and now >= conn.read_deadline:
                    conn.read_timed_out()
                if conn.write_deadline and now >= conn.write_deadline:
                    conn.send_timed_out()
            if now >= next_limits:
                next_limits = now + 1.0
                self._give_memory_back()
                self.max_connections = self._max_connections()
                if not self.spares and len(self.connections) < self.max_connections:
                    self._hold_spares()
                self._resume_accepting()

    # -- for passenger-status ---------------------------------------------------------

    def requests_snapshot(self) -> list[dict[str, object]]:
        """Every request in flight or queued, oldest first."""
        now = time.monotonic()
        found = [describe(request, position, now) for conn in self.connections
                 for position, request in enumerate(conn.requests)]
        return sorted(found, key=lambda r: -float(r["age"]))  # type: ignore[arg-type]

    def server_snapshot(self) -> dict[str, object]:
        """The server as a whole (Passenger's `--show=server`, our fields)."""
        return {
            "pid": os.getpid(), "server_software": SERVER_SOFTWARE,
            "server_state": "SHUTTING_DOWN" if self.closed else "ACTIVE",
            "uptime": round(time.time() - self.started, 3),
            "accepting": self.accepting,
            "active_client_count": len(self.connections),
            "peak_active_client_count": self.most_connections,
            "max_connections": self.max_connections,
            "total_clients_accepted": self.clients_accepted,
            "total_requests_begun": self.requests_begun,
            "requests_in_flight": sum(len(c.requests) for c in self.connections),
            "request_buffering": self.request_buffering,
            "timeouts": {"client_header": self.header_timeout,
                         "client_body": self.body_timeout, "send": self.send_timeout,
                         "keepalive": self.keepalive_timeout},
            "event_loop": type(self.loop).__module__.split(".")[0] if self.loop else None,
        }
