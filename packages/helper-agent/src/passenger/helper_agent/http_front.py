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
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from itertools import chain
from typing import TYPE_CHECKING, cast
from urllib.parse import unquote_to_bytes

from passenger.common import app_protocol as proto
from passenger.helper_agent.access_log import access_line
from passenger.helper_agent.error_pages import error_response, http_date, simple_page
from passenger.helper_agent.forwarded import SCHEME_HEADERS, forwarded_scheme
from passenger.helper_agent.http_parser import HttpError, RequestHead, RequestParser
from passenger.helper_agent.proxied_request import CONTINUE, Request
from passenger.helper_agent.spool import Spool
from passenger.helper_agent.static_files import StaticResponse
from passenger.helper_agent.tunnel import Tunnel

if TYPE_CHECKING:
    from passenger.helper_agent.front_end import FrontEnd
    from passenger.helper_agent.group import Group

log = logging.getLogger(__name__)

MAX_PIPELINED = 32
LINGER_SECONDS = 2.0  # after our last byte, read (and drop) what the client still sends
MAX_RESPONSE_SPOOL = 1 << 30  # per connection; beyond it the app waits for the client
FILE_CHUNK = 1 << 20          # a static file: bytes per sendfile(2)
TRANSPORT_CHUNK = 64 * 1024   # ... and per write when the socket is full
STATIC_REASONS = {200: b"OK", 206: b"Partial Content", 304: b"Not Modified",
                  416: b"Range Not Satisfiable"}
CLIENT_CLOSED_REQUEST = 499  # nginx's status for the access log: the client went away
REQUEST_TIMEOUT = 408
PROTOCOLS = {b"1.0": b"HTTP/1.0", b"1.1": b"HTTP/1.1"}
HTTPS_FIELDS = (b"wsgi.url_scheme", b"https", b"HTTPS", b"on")
UPGRADE_FIELD = (proto.UPGRADE_KEY.encode(), b"1")
# What the read deadline is for.
HEADER, BODY, KEEPALIVE = "header", "body", "keepalive"


class HttpConnection(asyncio.Protocol):
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

    def pause_reading(self, reason: str) -> None:
        if not self.read_pauses and self.transport is not None:
            self.transport.pause_reading()
        self.read_pauses.add(reason)

    def resume_reading(self, reason: str) -> None:
        self.read_pauses.discard(reason)
        if not self.read_pauses and self.transport is not None:
            self.transport.resume_reading()

    # -- writing: what the client cannot take now waits in the spool ------------------

    def write(self, data: bytes) -> None:
        if self.spool is None:
            if not self.writing_paused:
                if self.transport is not None:
                    self.transport.write(data)
                return
            self.spool = Spool(self.front.buffer_dir)
        self.spool.append(data)
        if len(self.spool) > MAX_RESPONSE_SPOOL and not self.app_held:
            self._hold_app(True)

    def splice_fd(self) -> int:
        """Our socket, if bytes may be written to it directly now (nothing waits in the
        transport or the spool, and the client takes bytes), else -1."""
        transport = self.transport
        if transport is None or self.spool is not None or self.writing_paused \
                or self.tunnel is not None or self.file_body is not None \
                or transport.get_write_buffer_size():
            return -1
        sock = transport.get_extra_info("socket")
        return -1 if sock is None else int(sock.fileno())

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.tunnel is not None:
            self.tunnel.client_paused()
        else:
            self.write_deadline = self.loop.time() + self.front.send_timeout

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.tunnel is not None:
            self.tunnel.client_resumed()
            return
        self.write_deadline = 0.0
        spool = self.spool
        while spool is not None and not self.writing_paused and self.transport is not None:
            data = spool.read()
            if not data:
                spool.close()
                self.spool = None
                if self.app_held:
                    self._hold_app(False)
                if self.closing:
                    self._close()
                elif self.file_body is not None:
                    self._send_file()
                return
            self.transport.write(data)  # may pause writing again at once
        if spool is None and self.file_body is not None:
            self._send_file()
        if self.app_held and spool is not None and len(spool) < MAX_RESPONSE_SPOOL // 2:
            self._hold_app(False)

    def _hold_app(self, hold: bool) -> None:
        """Backpressure to the app, only when the spool is full."""
        self.app_held = hold
        channel = self.requests[0].channel if self.requests else None
        if channel is not None:
            if hold:
                channel.pause()
            else:
                channel.resume()

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

    # -- timeouts (checked by FrontEnd's sweep) --------------------------------------

    def _wait_to_read(self, what: str, timeout: float) -> None:
        self.read_waits_for = what
        self.read_deadline = self.loop.time() + timeout

    def read_timed_out(self) -> None:
        self.read_deadline = 0.0
        what = self.read_waits_for
        if what is KEEPALIVE or (what is HEADER and not self.parser.in_message
                                 and not self.requests):
            self._close()  # nothing asked: close quietly
            return
        timeout = self.front.header_timeout if what is HEADER else self.front.body_timeout
        option = "--client-header-timeout" if what is HEADER else "--client-body-timeout"
        log.info("Client %s timed out reading the request %s (%s %g s)",
                 self.remote_addr.decode(), what, option, timeout)
        self._reject(REQUEST_TIMEOUT, f"The request {what} did not arrive in time "
                                      f"({option} {timeout:g} s)")

    def send_timed_out(self) -> None:
        """The client took nothing for --send-timeout: it is gone, or as good as."""
        self.write_deadline = 0.0
        log.info("Client %s timed out reading the response (--send-timeout %g s); "
                 "closing", self.remote_addr.decode(), self.front.send_timeout)
        if self.transport is not None:
            self.transport.abort()

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

    def _request_with_body(self, head: RequestHead, env: list[bytes],
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

    def on_body(self, data: bytes) -> None:
        request = self.current
        if request is not None:
            self.read_deadline = self.loop.time() + self.front.body_timeout
            request.received += len(data)
            if self.front.max_body_size and request.received > self.front.max_body_size:
                raise _too_large(self.front.max_body_size)  # a chunked body grew too big
            request.feed_body(data)

    def on_message_complete(self) -> None:
        request, self.current = self.current, None
        if request is None:
            return
        self.read_deadline = 0.0
        buffered = request.env is not None
        request.end_body()
        if buffered and self.requests and self.requests[0] is request:
            self._route(request)  # a buffered body is whole: now it may go

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

    # -- static files (see static_files) -------------------------------------------------

    def _serve_static(self, request: Request, found: StaticResponse) -> None:
        request.static = None
        if found.status == 404:
            request.fail(404, "Not Found")
            return
        head = [b"HTTP/1.1 %d %s\r\n" % (found.status, STATIC_REASONS[found.status])]
        head += [name + b": " + value + b"\r\n" for name, value in found.headers]
        if found.status != 304:
            head.append(b"Content-Length: %d\r\n" % found.length)
        head += [b"Date: ", http_date(), b"\r\n", self.server_header]
        if not request.keep_alive:
            head.append(b"Connection: close\r\n")
        elif request.http10:
            head.append(b"Connection: keep-alive\r\n")
        self.write(b"".join(head) + b"\r\n")
        request.status = found.status
        if request.head_only or found.fd < 0 or found.length == 0:
            found.close()
            request.complete()
            return
        request.bytes_sent = found.length
        self.file_body, self.file_request = found, request
        if self.spool is None and not self.writing_paused:
            self._send_file()

    def _send_file(self) -> None:
        """sendfile(2) while the transport holds nothing; when the socket is full, one
        chunk goes to the transport instead, which pauses us until the client reads."""
        body, transport = self.file_body, self.transport
        assert body is not None and self.file_request is not None
        sock = transport.get_extra_info("socket") if transport is not None else None
        while transport is not None and sock is not None and body.length \
                and not self.writing_paused:
            try:
                if transport.get_write_buffer_size() == 0:
                    try:
                        sent = os.sendfile(sock.fileno(), body.fd, body.offset,
                                           min(body.length, FILE_CHUNK))
                    except BlockingIOError:
                        sent = -1
                    if sent > 0:
                        body.offset += sent
                        body.length -= sent
                        continue
                    if sent == 0:
                        raise EOFError
                data = os.pread(body.fd, min(body.length, TRANSPORT_CHUNK), body.offset)
                if not data:
                    raise EOFError
            except (OSError, EOFError):  # the file shrank, or the client is gone
                self.file_body = self.file_request = None
                body.close()
                self._close()
                return
            body.offset += len(data)
            body.length -= len(data)
            transport.write(data)  # may pause writing: resume_writing brings us back
        if body.length == 0:
            request = self.file_request
            self.file_body = self.file_request = None
            body.close()
            request.complete()

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


def _too_large(limit: int) -> HttpError:
    return HttpError(413, f"The request body is larger than {limit // (1024 * 1024)} MB "
                          f"(--client-max-body-size)")
