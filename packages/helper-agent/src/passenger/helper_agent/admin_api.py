"""The admin API on `<instance>/admin.sock`: HTTP/1.1 + JSON, for root and the owner only.

    GET  /ping.json                     -> {"status": "ok"}
    GET  /pool.json                     -> the live pool: groups, processes, queues, counters
    GET  /requests.json                 -> the requests in flight and queued
    GET  /server.json                   -> the server as a whole (clients, counters, limits)
    GET  /backtraces.json               -> every thread's stack in every WSGI process
    POST /pool/detach_process.json      {"pid": N} -> shut that process down gracefully
    POST /pool/restart_app_group.json   {"app_root_prefix": "/srv/app", "rolling": false}

The paths are named once, in `passenger.common.admin_paths`, for us and our callers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import httptools

from passenger.common import admin_paths
from passenger.helper_agent import pool_status

if TYPE_CHECKING:
    from passenger.helper_agent.front_end import FrontEnd
    from passenger.helper_agent.pool import Pool

log = logging.getLogger(__name__)
PEERCRED = struct.Struct("3i")
MAX_ADMIN_REQUEST = 1 << 20


def peer_uid(sock: socket.socket) -> int:
    _pid, uid, _gid = PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size))
    return int(uid)


Handler = Callable[[bytes], "tuple[int, Any] | Awaitable[tuple[int, Any]]"]


def _json_body(body: bytes, key: str, kind: type) -> Any:
    try:
        value = json.loads(body)[key]
    except (ValueError, KeyError, TypeError):
        raise BadRequest(f"expected a JSON object with {key!r}") from None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadRequest(f"{key!r} must be a {kind.__name__}")
    return value


class BadRequest(Exception):
    pass


def admin_routes(pool: Pool, front: FrontEnd) -> dict[tuple[bytes, bytes], Handler]:
    """The handler of each (method, path), in bytes as the parser gives them."""
    def detach(body: bytes) -> tuple[int, Any]:
        pid = _json_body(body, "pid", int)
        if not pool.detach(pid):
            return 404, {"error": f"no running app process with PID {pid}"}
        return 200, {"detached": pid}

    def restart(body: bytes) -> tuple[int, Any]:
        prefix = _json_body(body, "app_root_prefix", str)
        try:
            rolling = json.loads(body).get("rolling", False) is True
        except AttributeError:
            rolling = False
        names = pool.restart(prefix, rolling)
        if not names:
            return 404, {"error": f"no app whose root begins with {prefix!r}"}
        return 200, {"restarted": names}

    async def backtraces(body: bytes) -> tuple[int, Any]:
        return 200, await pool_status.backtraces(pool)

    routes: dict[tuple[str, str], Handler] = {
        ("GET", admin_paths.PING): lambda body: (200, {"status": "ok"}),
        ("GET", admin_paths.POOL): lambda body: (200, pool_status.pool_snapshot(pool)),
        ("GET", admin_paths.REQUESTS): lambda body: (200, front.requests_snapshot()),
        ("GET", admin_paths.SERVER): lambda body: (200, {**front.server_snapshot(),
                                                         "pool": pool_status.pool_snapshot(pool)}),
        ("GET", admin_paths.BACKTRACES): backtraces,
        ("POST", admin_paths.DETACH_PROCESS): detach,
        ("POST", admin_paths.RESTART_APP_GROUP): restart,
    }
    return {(method.encode(), path.encode()): handler
            for (method, path), handler in routes.items()}


class AdminConnection(asyncio.Protocol):
    def __init__(self, routes: dict[tuple[bytes, bytes], Handler]) -> None:
        self.routes = routes
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body = bytearray()
        self.authorized = False
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        try:
            uid = peer_uid(sock)
        except OSError:
            uid = -1
        self.authorized = uid in (0, os.getuid())

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._respond(400, {"error": f"malformed request: {exc}"})

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > MAX_ADMIN_REQUEST:
            self._respond(413, {"error": "request body too large"})

    def on_message_complete(self) -> None:
        if not self.authorized:
            self._respond(403, {"error": "only root and the instance's owner may use the "
                                         "admin API"})
            return
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        handler = self.routes.get((method, path))
        if handler is None:
            known = any(p == path for _, p in self.routes)
            self._respond(405 if known else 404,
                          {"error": f"no such endpoint: {method.decode()} {path.decode()}"})
            return
        try:
            result = handler(bytes(self.body))
        except Exception as exc:
            self._respond(*self._failure(exc))
            return
        if isinstance(result, tuple):
            self._respond(*result)
        else:  # a coroutine: answer when it is done
            task = asyncio.get_running_loop().create_task(self._respond_later(result))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _respond_later(self, pending: Awaitable[tuple[int, Any]]) -> None:
        try:
            self._respond(*await pending)
        except Exception as exc:
            self._respond(*self._failure(exc))

    @staticmethod
    def _failure(exc: Exception) -> tuple[int, Any]:
        if isinstance(exc, BadRequest):
            return 400, {"error": str(exc)}
        log.exception("Admin API handler failed", exc_info=exc)
        return 500, {"error": str(exc)}

    def _respond(self, status: int, payload: Any) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        body = json.dumps(payload, indent=2).encode() + b"\n"
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (status, b"OK" if status < 400 else b"Error",
                                            len(body)) + body)
        self.transport.close()
