"""A request as it comes in on a client connection (the parser's callbacks): its head
becomes the environ fields for the app and a `Request` bound for its app's group (or a
static file, or a tunnel if the app agrees); its body is checked against
--client-max-body-size and passed on, or buffered; a complete request is routed once
it is the oldest on its connection.

`RequestIntake` is a part of `HttpConnection` (its base class).
"""

from __future__ import annotations

import asyncio
import collections
from itertools import chain
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote_to_bytes

from passenger.common import app_protocol as proto
from passenger.helper_agent.client_flow import BODY, MAX_PIPELINED
from passenger.helper_agent.forwarded import SCHEME_HEADERS, forwarded_scheme
from passenger.helper_agent.http_errors import HttpError
from passenger.helper_agent.proxied_request import ClientConnection, Request
from passenger.helper_agent.spool import Spool

if TYPE_CHECKING:
    from passenger.common.log_records import LogLineWriter
    from passenger.helper_agent.front_end import FrontEnd
    from passenger.helper_agent.group import Group
    from passenger.helper_agent.http_parser import RequestParser
    from passenger.helper_agent.pool import Pool
    from passenger.helper_agent.request_head import RequestHead

PROTOCOLS = {b"1.0": b"HTTP/1.0", b"1.1": b"HTTP/1.1"}
HTTPS_FIELDS = (b"wsgi.url_scheme", b"https", b"HTTPS", b"on")
UPGRADE_FIELD = (proto.UPGRADE_KEY.encode(), b"1")


class _Connection(ClientConnection, Protocol):
    """What of the connection (which this is a part of) taking requests in uses."""

    front: FrontEnd
    pool: Pool
    loop: asyncio.AbstractEventLoop
    parser: RequestParser
    access_log: LogLineWriter | None
    request_lines: dict[Request, tuple[bytes, bytes, bytes]]
    requests: collections.deque[Request]
    current: Request | None
    read_deadline: float
    trusted_proxy: bool
    server_name: bytes
    server_port: bytes
    remote_addr: bytes
    remote_port: bytes

    def pause_reading(self, reason: str) -> None: ...
    def _wait_to_read(self, what: str, timeout: float) -> None: ...
    def _start(self, request: Request) -> None: ...
    def _route(self, request: Request) -> None: ...
    def _request_with_body(self, head: RequestHead, env: list[bytes],
                           group: Group | None, keep_alive: bool) -> Request: ...


class RequestIntake:
    __slots__ = ()
    current: Request | None  # the connection's slot

    def on_head(self: _Connection, head: RequestHead) -> None:
        # With one app every request goes to it, whatever its host and path.
        group = self.pool.only_group or self.pool.group_for(head.host, head.path)
        path_info = head.path
        if b"%" in path_info:
            path_info = unquote_to_bytes(path_info)
        script_name = b""
        if group is not None and group.script_name:
            script_name = group.script_name
            path_info = path_info[len(script_name):]
        headers = head.headers
        env = [b"REQUEST_METHOD", head.method, b"REQUEST_URI", head.target,
               b"SCRIPT_NAME", script_name, b"PATH_INFO", path_info,
               b"QUERY_STRING", head.query, b"SERVER_PROTOCOL", PROTOCOLS[head.version],
               b"SERVER_NAME", self.server_name, b"SERVER_PORT", self.server_port,
               b"REMOTE_ADDR", self.remote_addr, b"REMOTE_PORT", self.remote_port]
        if self.trusted_proxy and not SCHEME_HEADERS.isdisjoint(headers) \
                and forwarded_scheme(headers) == b"https":
            env += HTTPS_FIELDS
        env.extend(chain.from_iterable(headers.items()))
        has_body = head.has_body
        upgrade = False
        if head.upgrade and group is not None and group.config.app_start_command \
                and not has_body:
            upgrade = True
            env += UPGRADE_FIELD
            self.parser.hold()  # what follows belongs to the tunnel, if the app agrees
        keep_alive = head.keep_alive and not upgrade and self.front.keepalive
        if not has_body:
            request = Request(self, [proto.encode_fields(env), proto.END],
                              head.method == b"HEAD", keep_alive, head.version == b"1.0",
                              group, head.expect_continue, upgrade)
            request.body_done = True
            if group is not None and group.static is not None and not upgrade:
                request.static = group.static.lookup(head.method, path_info, headers)
            self.read_deadline = 0.0  # nothing to read until the answer is out
        else:
            request = self._request_with_body(head, env, group, keep_alive)
        request.head = head
        self.front.requests_begun += 1
        self.current = request
        self.requests.append(request)
        if self.access_log is not None:
            self.request_lines[request] = (
                head.method + b" " + head.target + b" " + PROTOCOLS[head.version],
                headers.get(b"HTTP_REFERER", b""), headers.get(b"HTTP_USER_AGENT", b""))
        if len(self.requests) == 1:
            self._start(request)
        elif len(self.requests) > MAX_PIPELINED:
            self.pause_reading("pipeline")

    def _request_with_body(self: _Connection, head: RequestHead, env: list[bytes],
                           group: Group | None, keep_alive: bool) -> Request:
        front = self.front
        request = Request(self, [], head.method == b"HEAD", keep_alive,
                          head.version == b"1.0", group, head.expect_continue)
        self._wait_to_read(BODY, front.body_timeout)
        if front.max_body_size and head.content_length > front.max_body_size:
            raise _too_large(front.max_body_size)
        if front.request_buffering:
            request.spool = Spool(front.buffer_dir)
            request.env = env  # encoded once the body is whole (with its length)
        else:
            request.frames.append(proto.encode_fields(env))
        return request

    def on_body(self: _Connection, data: bytes) -> None:
        request = self.current
        if request is not None:
            self.read_deadline = self.loop.time() + self.front.body_timeout
            request.received += len(data)
            if self.front.max_body_size and request.received > self.front.max_body_size:
                raise _too_large(self.front.max_body_size)  # a chunked body grew too big
            request.feed_body(data)

    def on_message_complete(self: _Connection) -> None:
        request, self.current = self.current, None
        if request is None:
            return
        self.read_deadline = 0.0
        buffered = request.env is not None
        request.end_body()
        if buffered and self.requests and self.requests[0] is request:
            self._route(request)  # a buffered body is whole: now it may go


def _too_large(limit: int) -> HttpError:
    return HttpError(413, f"The request body is larger than {limit // (1024 * 1024)} MB "
                          f"(--client-max-body-size)")
