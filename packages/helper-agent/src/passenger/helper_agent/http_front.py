"""The HTTP/1.1 front end: parses client requests (httptools), hands each to the pool,
and relays the app's response with proper framing (Content-Length or chunked).

Keep-alive and pipelining: requests on one connection are answered strictly in order;
only the oldest one is routed at a time. Bad input gets a specific 4xx and the connection
is closed; an app that dies mid-request gets its client a 502.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import TYPE_CHECKING, cast

import httptools

from passenger.common import app_protocol as proto
from passenger.common.log_records import LogLineWriter
from passenger.helper_agent.error_pages import error_response, simple_page
from passenger.helper_agent.proxied_request import Request

if TYPE_CHECKING:
    from passenger.helper_agent.pool import Pool

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 80 * 1024  # Passenger's limit for a request head
MAX_PIPELINED = 32

_clf_cache: list[object] = [0, ""]


def clf_time() -> str:
    """The combined log format's `[27/Nov/2026:17:53:27 +0000]` time, cached per second."""
    now = int(time.time())
    if _clf_cache[0] != now:
        _clf_cache[0] = now
        _clf_cache[1] = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(now))
    return _clf_cache[1]  # type: ignore[return-value]


def _quoted(value: bytes) -> str:
    if not value:
        return "-"
    return value.decode("latin-1").replace("\\", "\\\\").replace('"', '\\"')


class HttpConnection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, pool: Pool, access_log: LogLineWriter | None = None) -> None:
        self.pool = pool
        self.access_log = access_log
        self.request_lines: dict[Request, tuple[bytes, bytes, bytes]] = {}
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.requests: collections.deque[Request] = collections.deque()
        self.writing_paused = False
        self.read_pauses: set[str] = set()  # why reading from the client is paused
        self.closing_error: bytes | None = None
        self.server_name = b""
        self.server_port = b""
        self.remote_addr = b""
        self.remote_port = b""
        self._reset_message()

    def _reset_message(self) -> None:
        self.url = b""
        self.headers: list[bytes] = []
        self.head_bytes = 0
        self.partial_head_bytes = 0
        self.in_head = False
        self.host = b""
        self.referer = b""
        self.user_agent = b""
        self.may_have_body = False
        self.expect_continue = False
        self.current: Request | None = None

    # -- connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sockname = transport.get_extra_info("sockname")
        peer = transport.get_extra_info("peername")
        if isinstance(sockname, tuple):
            self.server_name, self.server_port = sockname[0].encode(), b"%d" % sockname[1]
        else:
            self.server_name, self.server_port = b"localhost", b""
        if isinstance(peer, tuple):
            self.remote_addr, self.remote_port = peer[0].encode(), b"%d" % peer[1]
        else:
            self.remote_addr, self.remote_port = b"127.0.0.1", b"0"

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, "Protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            message = str(exc)
            status = 505 if "version" in message.lower() else 400
            self._reject(status, f"Malformed request: {message}")
            return
        # httptools buffers a header until it is complete: bound what it may hold too.
        if self.in_head:
            self.partial_head_bytes += len(data)
        if self.head_bytes > MAX_HEAD_BYTES or self.partial_head_bytes > MAX_HEAD_BYTES:
            self._reject(431, f"The request head is larger than {MAX_HEAD_BYTES} bytes")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for request in self.requests:
            request.abandon()  # the app stops working for a client that is gone
        self.requests.clear()

    def pause_reading(self, reason: str) -> None:
        if not self.read_pauses and self.transport is not None:
            self.transport.pause_reading()
        self.read_pauses.add(reason)

    def resume_reading(self, reason: str) -> None:
        self.read_pauses.discard(reason)
        if not self.read_pauses and self.transport is not None:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.requests and self.requests[0].channel is not None:
            self.requests[0].channel.pause()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.requests and self.requests[0].channel is not None:
            self.requests[0].channel.resume()

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _reject(self, status: int, reason: str) -> None:
        log.info("Rejected a request from %s: %d %s", self.remote_addr.decode(), status, reason)
        if self.transport is None:
            return
        self.pause_reading("rejected")
        response = error_response(status, simple_page(status, reason), close=True)
        if self.current is not None:
            self.current.abandon()  # it may already be with an app, with half a body
        # Earlier pipelined requests are answered first; this error closes after them.
        unanswered = [r for r in self.requests if r is not self.current]
        if unanswered:
            self.requests = collections.deque(unanswered)
            self.closing_error = response
        else:
            self.requests.clear()
            self.transport.write(response)
            self.transport.close()

    # -- parser callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset_message()
        self.in_head = True

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        key = name.upper()
        if b"_" in key:
            return  # as Passenger: could be confused with a dash-named header
        key = key.replace(b"-", b"_")
        if key == b"CONTENT_LENGTH":
            self.may_have_body = value.strip() not in (b"0", b"")
            self.headers += (key, value)
            return
        if key == b"CONTENT_TYPE":
            self.headers += (key, value)
            return
        if key == b"HOST":
            self.host = value
        elif key == b"REFERER":
            self.referer = value
        elif key == b"USER_AGENT":
            self.user_agent = value
        elif key == b"EXPECT" and value.lower() == b"100-continue":
            self.expect_continue = True
        elif key == b"TRANSFER_ENCODING":
            self.may_have_body = True  # the app gets the body de-chunked, ending in EOF
        self.headers += (b"HTTP_" + key, value)

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.head_bytes > MAX_HEAD_BYTES:
            return  # rejected with 431 once the parser returns
        parser = self.parser
        method = parser.get_method()
        url = self.url
        if url[:1] != b"/" and url != b"*":
            parsed = httptools.parse_url(url)
            path, query = parsed.path or b"/", parsed.query or b""
        else:
            path, _, query = url.partition(b"?")
        version = parser.get_http_version()
        group = self.pool.group_for(self.host, path)
        path_info = _unquote(path)
        script_name = b""
        if group is not None and len(group.route_rule.base_uri) > 1:
            script_name = group.route_rule.base_uri.rstrip("/").encode("latin-1")
            path_info = path_info[len(script_name):]
        env = [b"REQUEST_METHOD", method, b"REQUEST_URI", url, b"SCRIPT_NAME", script_name,
               b"PATH_INFO", path_info, b"QUERY_STRING", query,
               b"SERVER_PROTOCOL", b"HTTP/" + version.encode(),
               b"SERVER_NAME", self.server_name, b"SERVER_PORT", self.server_port,
               b"REMOTE_ADDR", self.remote_addr, b"REMOTE_PORT", self.remote_port]
        env += self.headers
        env.append(b"")
        block = b"\0".join(env)
        frames = [proto.encode_request_head(block)]
        if not self.may_have_body:
            frames.append(proto.END)  # head and end in one write to the app
        request = Request(self, frames, head_only=method == b"HEAD",
                          keep_alive=parser.should_keep_alive(), http10=version == "1.0",
                          group=group, expect_continue=self.expect_continue)
        request.body_done = not self.may_have_body
        self.current = request
        self.requests.append(request)
        if self.access_log is not None:
            self.request_lines[request] = (
                method + b" " + url + b" HTTP/" + version.encode(), self.referer,
                self.user_agent)
        if len(self.requests) == 1:
            self._route(request)
        elif len(self.requests) > MAX_PIPELINED:
            self.pause_reading("pipeline")

    def on_body(self, body: bytes) -> None:
        if self.current is not None:
            self.current.feed_body(body)

    def on_message_complete(self) -> None:
        if self.current is not None:
            self.current.end_body()
        self.current = None

    # -- request completion ----------------------------------------------------------

    def _route(self, request: Request) -> None:
        if request.group is None:
            request.fail(404, "No application is configured for this host name and URI")
        else:
            request.group.route(request)

    def request_finished(self, request: Request) -> None:
        if self.access_log is not None:
            self._log_access(request)
        if not self.requests or self.requests[0] is not request:
            return
        self.requests.popleft()
        if self.transport is None:
            return
        if not request.keep_alive:
            self.requests.clear()
            self.transport.close()
            return
        if self.requests:
            self._route(self.requests[0])
        elif self.closing_error is not None:
            self.transport.write(self.closing_error)
            self.transport.close()
        if len(self.requests) <= MAX_PIPELINED:
            self.resume_reading("pipeline")


    def _log_access(self, request: Request) -> None:
        """Combined log format, then the request's duration in seconds and the PID of the
        process that served it."""
        assert self.access_log is not None
        line, referer, agent = self.request_lines.pop(request, (b"-", b"", b""))
        pid = request.process.pid if request.process is not None else "-"
        self.access_log.write(
            f"{self.remote_addr.decode()} - - {clf_time()} \"{_quoted(line)}\" "
            f"{request.status or '-'} {request.bytes_sent} \"{_quoted(referer)}\" "
            f"\"{_quoted(agent)}\" {time.monotonic() - request.started:.6f} {pid}")


def _unquote(path: bytes) -> bytes:
    if b"%" not in path:
        return path
    from urllib.parse import unquote_to_bytes

    return unquote_to_bytes(path)
