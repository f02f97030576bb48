"""The HTTP/1.1 front end: parses client requests (`http_parser`), hands each to the pool,
and relays the app's response with proper framing (Content-Length or chunked).

Keep-alive and pipelining: requests on one connection are answered strictly in order;
only the oldest one is routed at a time. Bad input gets a specific 4xx and the connection
is closed; an app that dies mid-request gets its client a 502. A client that half-closes
its side still gets every answer it asked for. An `Upgrade` request to a generic app
becomes a tunnel once the app switches protocols.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from itertools import chain
from typing import TYPE_CHECKING, cast
from urllib.parse import unquote_to_bytes

from passenger.common import SERVER_SOFTWARE
from passenger.common import app_protocol as proto
from passenger.common.config import ServerConfig
from passenger.common.log_records import LogLineWriter
from passenger.helper_agent.error_pages import error_response, simple_page
from passenger.helper_agent.forwarded import SCHEME_HEADERS, TrustedProxies, forwarded_scheme
from passenger.helper_agent.http_parser import (
    HttpError,
    Limits,
    RequestHead,
    RequestParser,
)
from passenger.helper_agent.proxied_request import Request
from passenger.helper_agent.tunnel import Tunnel

if TYPE_CHECKING:
    from passenger.helper_agent.pool import Pool

log = logging.getLogger(__name__)

MAX_PIPELINED = 32
LINGER_SECONDS = 2.0  # after our last byte, read (and drop) what the client still sends
CLIENT_CLOSED_REQUEST = 499  # nginx's status for the access log: the client went away
PROTOCOLS = {b"1.0": b"HTTP/1.0", b"1.1": b"HTTP/1.1"}
HTTPS_FIELDS = (b"wsgi.url_scheme", b"https", b"HTTPS", b"on")
UPGRADE_FIELD = (proto.UPGRADE_KEY.encode(), b"1")

_clf_cache: list[object] = [0, ""]


def clf_time() -> str:
    """The combined log format's `[27/Nov/2026:17:53:27 +0000]` time, cached per second."""
    now = int(time.time())
    if _clf_cache[0] != now:
        _clf_cache[0] = now
        _clf_cache[1] = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(now))
    return _clf_cache[1]  # type: ignore[return-value]


def _quoted(value: bytes) -> str:
    """For the access log: printable ASCII only, so a client cannot forge lines or
    send terminal escapes to whoever reads the log."""
    if not value:
        return "-"
    text = value.decode("ascii", "backslashreplace")
    return text.replace('"', '\\"').translate(_CONTROLS)


_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(32), 127)}


class FrontEnd:
    """What every client connection shares: the pool, the limits, whom to trust."""

    def __init__(self, pool: Pool, config: ServerConfig,
                 access_log: LogLineWriter | None = None) -> None:
        self.pool = pool
        self.access_log = access_log
        self.limits = Limits(config.limit_request_line, config.limit_request_fields,
                             config.limit_request_field_size)
        self.proxies = TrustedProxies(config.forwarded_allow_ips)
        self.server_header = (b"Server: " + SERVER_SOFTWARE.encode() + b"\r\n"
                              if config.server_header else b"")

    def connection(self) -> HttpConnection:
        return HttpConnection(self)


class HttpConnection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, front: FrontEnd) -> None:
        self.front = front
        self.pool = front.pool
        self.access_log = front.access_log
        self.server_header = front.server_header
        self.parser = RequestParser(self, front.limits)
        self.request_lines: dict[Request, tuple[bytes, bytes, bytes]] = {}
        self.transport: asyncio.Transport | None = None
        self.requests: collections.deque[Request] = collections.deque()
        self.current: Request | None = None  # the request whose body is arriving
        self.writing_paused = False
        self.read_pauses: set[str] = set()  # why reading from the client is paused
        self.closing_error: bytes | None = None
        self.client_done = False  # the client sent EOF: close after the last answer
        self.tunnel: Tunnel | None = None
        self.linger: asyncio.TimerHandle | None = None
        self.trusted_proxy = False
        self.server_name = b""
        self.server_port = b""
        self.remote_addr = b""
        self.remote_port = b""

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
            self.trusted_proxy = self.front.proxies.trusts(peer[0])
        else:  # a Unix socket: only local users can be there
            self.remote_addr, self.remote_port = b"127.0.0.1", b"0"
            self.trusted_proxy = self.front.proxies.trusts(None)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_client(data)
            return
        try:
            self.parser.feed(data)
        except HttpError as exc:
            self._reject(exc.status, exc.reason)

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            self.tunnel.client_eof()
            return None
        if self.linger is not None:
            return None  # we were waiting for this to close
        self.client_done = True
        try:
            self.parser.feed_eof()
        except HttpError as exc:  # mid-request: the client gave up on it
            self._reject(exc.status, exc.reason, logged_as=CLIENT_CLOSED_REQUEST)
            return True
        if self.requests:
            return True  # keep our side open: the answers are still due
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.linger is not None:
            self.linger.cancel()
        if self.tunnel is not None:
            self.tunnel.client_closed()
        for request in self.requests:
            if not request.done:
                request.abandon()  # the app stops working for a client that is gone
                self._log_access(request, CLIENT_CLOSED_REQUEST)
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
        if self.tunnel is not None:
            self.tunnel.client_paused()
        elif self.requests and self.requests[0].channel is not None:
            self.requests[0].channel.pause()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.tunnel is not None:
            self.tunnel.client_resumed()
        elif self.requests and self.requests[0].channel is not None:
            self.requests[0].channel.resume()

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def start_tunnel(self, app: asyncio.Transport) -> Tunnel | None:
        """The app switched protocols: from now on bytes flow both ways unparsed."""
        if self.transport is None:
            return None
        self.tunnel = Tunnel(self.transport, app)
        self.tunnel.from_client(self.parser.take_held())
        self.read_pauses.clear()
        self.transport.resume_reading()
        return self.tunnel

    def _reject(self, status: int, reason: str, logged_as: int = 0) -> None:
        """Answer `status` after the requests before this one, then close. The request
        whose head or body was bad is logged with `logged_as` (default: `status`)."""
        log.info("Rejected a request from %s: %d %s", self.remote_addr.decode(), status,
                 reason)
        self.parser.stop()  # from now on what the client sends is read and dropped
        if self.transport is None:
            return
        response = error_response(status, simple_page(status, reason), close=True,
                                  server=self.server_header)
        current, self.current = self.current, None
        if current is not None:
            current.abandon()  # it may already be with an app, with half a body
            self._log_access(current, logged_as or status)
        else:
            self._log_rejection(status, len(response) - response.index(b"\r\n\r\n") - 4)
        # Earlier pipelined requests are answered first; this error closes after them.
        unanswered = [r for r in self.requests if r is not current]
        if unanswered:
            self.requests = collections.deque(unanswered)
            self.closing_error = response
        else:
            self.requests.clear()
            self.transport.write(response)
            self._close()

    def _close(self) -> None:
        """Close after what we wrote, without a reset: the client may still be sending
        (a body we refused, pipelined requests), and closing with unread input makes the
        kernel send RST, which can destroy our answer before the client reads it. So we
        send FIN and read on, dropping everything, until the client closes or
        LINGER_SECONDS pass (nginx's lingering close)."""
        transport = self.transport
        if transport is None or self.linger is not None:
            return
        self.parser.stop()
        if self.client_done or not transport.can_write_eof():
            transport.close()  # nothing more can come from the client
            return
        transport.write_eof()
        self.read_pauses.clear()
        transport.resume_reading()
        self.linger = asyncio.get_running_loop().call_later(LINGER_SECONDS,
                                                            transport.close)

    # -- parser callbacks ------------------------------------------------------------

    def on_head(self, head: RequestHead) -> None:
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
        frames = [proto.encode_fields(env)] if has_body else \
            [proto.encode_fields(env), proto.END]  # head and end in one write to the app
        request = Request(self, frames, head.method == b"HEAD",
                          head.keep_alive and not upgrade, head.version == b"1.0", group,
                          head.expect_continue, upgrade)
        request.body_done = not has_body
        self.current = request
        self.requests.append(request)
        if self.access_log is not None:
            headers = head.headers
            self.request_lines[request] = (
                head.method + b" " + head.target + b" " + PROTOCOLS[head.version],
                headers.get(b"HTTP_REFERER", b""), headers.get(b"HTTP_USER_AGENT", b""))
        if len(self.requests) == 1:
            self._route(request)
        elif len(self.requests) > MAX_PIPELINED:
            self.pause_reading("pipeline")

    def on_body(self, data: bytes) -> None:
        if self.current is not None:
            self.current.feed_body(data)

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
            self._log_access(request, request.status)
        if not self.requests or self.requests[0] is not request:
            return
        self.requests.popleft()
        if self.transport is None or self.tunnel is not None:
            return
        if not request.keep_alive:
            self.requests.clear()
            self._close()
            return
        if self.requests:
            self._route(self.requests[0])
        elif self.closing_error is not None:
            self.transport.write(self.closing_error)
            self._close()
        elif self.client_done:
            self._close()
        if self.read_pauses and len(self.requests) <= MAX_PIPELINED:
            self.resume_reading("pipeline")

    def _log_access(self, request: Request, status: int) -> None:
        """Combined log format, then the request's duration in seconds and the PID of the
        process that served it."""
        if self.access_log is None:
            return
        line, referer, agent = self.request_lines.pop(request, (b"", b"", b""))
        pid = request.process.pid if request.process is not None else "-"
        self._write_access_line(line, status or 0, request.bytes_sent, referer, agent,
                                time.monotonic() - request.started, pid)

    def _log_rejection(self, status: int, size: int) -> None:
        if self.access_log is not None:
            self._write_access_line(b"", status, size, b"", b"", 0.0, "-")

    def _write_access_line(self, line: bytes, status: int, size: int, referer: bytes,
                           agent: bytes, seconds: float, pid: object) -> None:
        assert self.access_log is not None
        self.access_log.write(
            f"{self.remote_addr.decode()} - - {clf_time()} \"{_quoted(line)}\" "
            f"{status or '-'} {size} \"{_quoted(referer)}\" \"{_quoted(agent)}\" "
            f"{seconds:.6f} {pid}")
