"""One client connection: parses its requests (`http_parser`), hands each to the pool,
and relays the app's response with proper framing (Content-Length or chunked).

Keep-alive and pipelining: requests on one connection are answered strictly in order;
only the oldest one is routed at a time. Bad input gets a specific 4xx and the connection
is closed; an app that dies mid-request gets its client a 502. A client that half-closes
its side still gets every answer it asked for. An `Upgrade` request to a generic app
becomes a tunnel once the app switches protocols.

A slow client costs a descriptor and a buffer, never an app process: a request body is
read whole before the request is routed (`--no-request-buffering` streams it, with
backpressure), and what the client has not taken of a response waits in a spool (memory,
then a file), so the app process is free as soon as the app has finished. Bytes the
client can take now are never held back, so streams flow as they are produced.

This module has the connection's life (events, refusing and closing, requests answered
in order, accounting); its parts are base classes of `HttpConnection`: taking requests
in (`request_intake`), the pace of reading and writing (`client_flow`), and sending a
static file (`static_sending`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import TYPE_CHECKING, cast

from passenger.helper_agent.access_log import access_line
from passenger.helper_agent.client_flow import HEADER, KEEPALIVE, MAX_PIPELINED, ClientFlow
from passenger.helper_agent.error_pages import error_response, simple_page
from passenger.helper_agent.http_errors import HttpError
from passenger.helper_agent.http_parser import RequestParser
from passenger.helper_agent.proxied_request import CONTINUE, Request
from passenger.helper_agent.request_intake import RequestIntake
from passenger.helper_agent.spool import Spool
from passenger.helper_agent.static_files import StaticResponse
from passenger.helper_agent.static_sending import StaticFileSender
from passenger.helper_agent.tunnel import Tunnel

if TYPE_CHECKING:
    from passenger.helper_agent.front_end import FrontEnd

log = logging.getLogger(__name__)

LINGER_SECONDS = 2.0  # after our last byte, read (and drop) what the client still sends
CLIENT_CLOSED_REQUEST = 499  # nginx's status for the access log: the client went away


class HttpConnection(RequestIntake, StaticFileSender, ClientFlow, asyncio.Protocol):
    """One client connection (slots: thousands of idle ones must stay small)."""

    __slots__ = ("access_log", "app_held", "client_done", "closing", "closing_error",
                 "current", "file_body", "file_request", "front", "linger", "loop",
                 "parser", "pool", "read_deadline",
                 "read_pauses", "read_waits_for", "remote_addr", "remote_port",
                 "request_lines", "requests", "server_header", "server_name",
                 "server_port", "spool", "transport", "trusted_proxy", "tunnel",
                 "write_deadline", "writing_paused")

    def __init__(self, front: FrontEnd) -> None:
        self.front = front
        self.pool = front.pool
        self.access_log = front.access_log
        self.server_header = front.server_header
        self.parser = RequestParser(self, front.limits)
        self.request_lines: dict[Request, tuple[bytes, bytes, bytes]] = {}
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.requests: collections.deque[Request] = collections.deque()
        self.current: Request | None = None  # the request whose body is arriving
        self.writing_paused = False
        self.read_pauses: set[str] = set()  # why reading from the client is paused
        self.closing_error: bytes | None = None
        self.client_done = False  # the client sent EOF: close after the last answer
        self.closing = False      # close once the spool has gone out
        self.spool: Spool | None = None  # response bytes the client has not taken yet
        self.app_held = False     # the spool is full: the app waits for the client
        self.tunnel: Tunnel | None = None
        self.file_body: StaticResponse | None = None  # a static file being sent
        self.file_request: Request | None = None
        self.linger: asyncio.TimerHandle | None = None
        self.read_deadline = 0.0  # when reading times out (0: not waiting to read)
        self.read_waits_for = HEADER
        self.write_deadline = 0.0  # when a client that does not read times out
        self.trusted_proxy = False
        self.server_name = b""
        self.server_port = b""
        self.remote_addr = b""
        self.remote_port = b""

    # -- connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.front.connection_opened(self)
        self._wait_to_read(HEADER, self.front.header_timeout)  # nginx: from accept
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
        if self.read_waits_for is KEEPALIVE:  # a new request begins
            self._wait_to_read(HEADER, self.front.header_timeout)
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
        self.read_deadline = 0.0
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
        self.front.connection_closed(self)
        self.read_deadline = self.write_deadline = 0.0
        if self.linger is not None:
            self.linger.cancel()
        if self.spool is not None:
            self.spool.close()
            self.spool = None
        if self.file_body is not None:
            self.file_body.close()
            self.file_body = None
        if self.tunnel is not None:
            self.tunnel.client_closed()
        for request in self.requests:
            if not request.done:
                request.abandon()  # the app stops working for a client that is gone
                self._request_ended(request, CLIENT_CLOSED_REQUEST)
        self.requests.clear()

    def start_tunnel(self, app: asyncio.Transport) -> Tunnel | None:
        """The app switched protocols: from now on bytes flow both ways unparsed."""
        if self.transport is None:
            return None
        self.read_deadline = self.write_deadline = 0.0  # a tunnel has its own life
        if self.spool is not None:  # what came before the switch goes first
            while data := self.spool.read():
                self.transport.write(data)
            self.spool.close()
            self.spool = None
        self.tunnel = Tunnel(self.transport, app)
        self.tunnel.from_client(self.parser.take_held())
        self.read_pauses.clear()
        self.transport.resume_reading()
        return self.tunnel

    # -- refusing and closing ----------------------------------------------------------

    def _reject(self, status: int, reason: str, logged_as: int = 0) -> None:
        """Answer `status` after the requests before this one, then close. The request
        whose head or body was bad is logged with `logged_as` (default: `status`)."""
        log.info("Rejected a request from %s: %d %s", self.remote_addr.decode(), status,
                 reason)
        self.parser.stop()  # from now on what the client sends is read and dropped
        self.read_deadline = 0.0
        if self.transport is None:
            return
        response = error_response(status, simple_page(status, reason), close=True,
                                  server=self.server_header)
        current, self.current = self.current, None
        if current is not None:
            current.abandon()  # it may already be with an app, with half a body
            self._request_ended(current, logged_as or status)
        else:
            self._rejected(status, len(response) - response.index(b"\r\n\r\n") - 4)
        # Earlier pipelined requests are answered first; this error closes after them.
        unanswered = [r for r in self.requests if r is not current]
        if unanswered:
            self.requests = collections.deque(unanswered)
            self.closing_error = response
        else:
            self.requests.clear()
            self.write(response)
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
        self.read_deadline = 0.0
        if self.spool is not None:
            self.closing = True  # once the client has taken what is spooled
            return
        if self.client_done or not transport.can_write_eof():
            transport.close()  # nothing more can come from the client
            return
        transport.write_eof()
        self.read_pauses.clear()
        transport.resume_reading()
        self.linger = self.loop.call_later(LINGER_SECONDS, transport.close)

    # -- request completion ----------------------------------------------------------

    def _start(self, request: Request) -> None:
        """`request` is the oldest: route it, or (a body still arriving into its buffer)
        tell its client to go on sending."""
        if request.env is None or request.body_done:
            self._route(request)
            return
        if request.group is not None and request.group.queue_is_full():
            self._route(request)  # queue full: the 503 comes now, not after the body
            return
        if request.expect_continue and not request.http10:
            request.expect_continue = False
            self.write(CONTINUE)

    def _route(self, request: Request) -> None:
        if request.done:
            return
        if request.static is not None:
            self._serve_static(request, request.static)
        elif request.group is None:
            request.fail(404, "No application is configured for this host name and URI")
        else:
            request.group.route(request)

    def request_finished(self, request: Request) -> None:
        self._request_ended(request, request.status)
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
            self._start(self.requests[0])
        elif self.closing_error is not None:
            self.write(self.closing_error)
            self._close()
        elif self.client_done:
            self._close()
        elif self.parser.in_message:
            self._wait_to_read(HEADER, self.front.header_timeout)
        else:
            self._wait_to_read(KEEPALIVE, self.front.keepalive_timeout)
        if self.read_pauses and len(self.requests) <= MAX_PIPELINED:
            self.resume_reading("pipeline")

    def _request_ended(self, request: Request, status: int) -> None:
        """Counted for the metrics, and logged when there is an access log."""
        seconds = time.monotonic() - request.started
        (request.group.metrics if request.group else self.front.unrouted).record(
            status, seconds)
        if self.access_log is None:
            return
        line, referer, agent = self.request_lines.pop(request, (b"", b"", b""))
        pid = request.process.pid if request.process is not None else "-"
        self.access_log.write(access_line(self.remote_addr, line, status or 0,
                                          request.bytes_sent, referer, agent, seconds, pid))

    def _rejected(self, status: int, size: int) -> None:
        """A request refused before it was one (a bad head): no app, no duration."""
        self.front.unrouted.record(status, 0.0)
        if self.access_log is not None:
            self.access_log.write(access_line(self.remote_addr, b"", status, size, b"", b"",
                                              0.0, "-"))

