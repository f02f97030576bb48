"""The connection to a generic app (`--app-start-command`): plain HTTP/1.1 to the port it
was given in $PORT.

It takes the same request frames as `AppChannel` (see `passenger.common.app_protocol`),
turns them back into an HTTP request, and turns the app's HTTP response into the same
calls on the request (`on_response_head` / `_body` / `_end`). A connection the app closes
(HTTP/1.0 servers do after every response) is reopened for the next request.

An upgrade request (a WebSocket handshake) goes to the app with its `Connection:
Upgrade`; if the app answers 101, its TCP connection leaves this channel and becomes one
end of a tunnel to the client, and the channel opens a new connection for the next
request, so a long-lived WebSocket does not hold a request slot of the process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

import httptools

from passenger.common import app_protocol as proto
from passenger.common.lifecycle import Transitions
from passenger.helper_agent.app_channel import Channel, ChannelState, ReadPausing, ResponseSink
from passenger.helper_agent.tunnel import Tunnel

log = logging.getLogger(__name__)
# Hop-by-hop (app_protocol.HOP_BY_HOP) and framing headers: ours to set, not the client's
# or the app's to pass on (RFC 9110 7.6.1). A client's Proxy-Authorization still reaches
# the app, as it always has: we are no proxy that asks for it.
REQUEST_HOP_BY_HOP = frozenset(
    "HTTP_" + name.upper().replace("-", "_") for name in proto.HOP_BY_HOP
    if not name.startswith("proxy-auth")) | {
    "HTTP_EXPECT", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO"}
RESPONSE_HOP_BY_HOP = frozenset(name.encode() for name in proto.HOP_BY_HOP) | {
    b"content-length"}
SWITCHING_KEPT = frozenset((b"connection", b"upgrade"))  # what a 101 must pass on
CGI_HEADERS = {"CONTENT_TYPE": "Content-Type", "CONTENT_LENGTH": "Content-Length"}
IDLE, AWAITING_HEAD, RESPONDING = (ChannelState.IDLE, ChannelState.AWAITING_HEAD,
                                   ChannelState.RESPONDING)
CLOSED = ChannelState.CLOSED
# Its TCP connection comes and goes beneath these states (an HTTP/1.0 app closes it after
# every response; it is opened again when a request needs it).
HTTP_CHANNEL_LIFECYCLE = Transitions("HTTP app channel", [
    (IDLE, AWAITING_HEAD, "a request starts on it"),
    (AWAITING_HEAD, RESPONDING, "the app's response head"),
    (AWAITING_HEAD, IDLE, "the pool answered the request itself, or the connection "
                          "failed or closed before a response"),
    (RESPONDING, IDLE, "the response ended, broke off, or became a tunnel (101)"),
    *((live, CLOSED, "its process ended") for live in (IDLE, AWAITING_HEAD, RESPONDING)),
])


def http_request_head(environ: dict[str, str]) -> tuple[bytes, bool]:
    """-> (request line and headers, whether the body goes chunked)."""
    lines = [f"{environ.get('REQUEST_METHOD', 'GET')} {environ.get('REQUEST_URI', '/')} "
             f"HTTP/1.1"]
    named = environ.get("HTTP_CONNECTION", "")  # fields the client made hop-by-hop
    skip = REQUEST_HOP_BY_HOP | {
        "HTTP_" + t.strip().upper().replace("-", "_") for t in named.split(",") if t.strip()}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            if key not in skip:
                lines.append(f"{key[5:].replace('_', '-').title()}: {value}")
        elif key in CGI_HEADERS and value:
            lines.append(f"{CGI_HEADERS[key]}: {value}")
    # A body of unknown length (the client sent it chunked) goes on chunked, whatever the
    # method: sent raw, it would be read as a request of its own.
    chunked = "HTTP_TRANSFER_ENCODING" in environ and "CONTENT_LENGTH" not in environ
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    if "HTTP_HOST" not in environ:  # an HTTP/1.0 client's request: 1.1 needs a Host
        lines.append(f"Host: {environ.get('SERVER_NAME', 'localhost')}")
    if proto.UPGRADE_KEY in environ:
        lines += ["Connection: Upgrade", f"Upgrade: {environ.get('HTTP_UPGRADE', '')}"]
    forwarded_for = environ.get("HTTP_X_FORWARDED_FOR")
    remote = environ.get("REMOTE_ADDR", "")
    lines.append("X-Forwarded-For: " + (f"{forwarded_for}, {remote}" if forwarded_for
                                        else remote))
    lines.append("X-Forwarded-Proto: " + environ.get("wsgi.url_scheme", "http"))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), chunked


class HttpAppChannel(ReadPausing):
    def __init__(self, port: int, on_response_end: Callable[[Channel], None],
                 on_lost: Callable[[], None]) -> None:
        self.port = port
        self.sink: ResponseSink | None = None
        self.transport: asyncio.Transport | None = None
        self.protocol: _HttpAppProtocol | None = None
        self.state = IDLE
        self._on_response_end = on_response_end
        self._on_lost = on_lost
        self._pending = bytearray()     # framed request bytes not yet translated
        self._outgoing: list[bytes] = []  # translated bytes waiting for a connection
        # What the request in progress is like, read from its head frame:
        self._head_seen = False         # its head frame has been translated
        self._chunked = False           # its body goes chunked
        self._head_only = False         # HEAD: the response has no body
        self.upgrade = False            # it asks to switch protocols
        self._connecting = False        # a TCP connection is being opened
        self._retry: list[bytes] | None = None  # a bodyless request's bytes, for one retry
        self._app_full = False

    def change_state(self, new: ChannelState) -> None:
        HTTP_CHANNEL_LIFECYCLE.check(self.state, new)
        self.state = new

    @property
    def available(self) -> bool:
        return self.state is IDLE

    def take_sink(self) -> ResponseSink | None:
        """The pool answered the request itself: a response still coming is nobody's,
        so the connection goes (the next request opens another)."""
        sink, self.sink = self.sink, None
        if self.state is AWAITING_HEAD or self.state is RESPONDING:
            self._drop_connection()
            self.change_state(IDLE)
        return sink

    @property
    def app_full(self) -> bool:
        """Our writes wait: for a connection, or in the transport (the app reads slowly)."""
        return self._app_full or self.transport is None

    def writing_paused(self, paused: bool) -> None:
        self._app_full = paused
        if not paused and self.sink is not None:
            self.sink.on_app_writable()

    # -- the request side (same calls as AppChannel) -----------------------------------

    def start(self, sink: ResponseSink, data: bytes) -> None:
        self.change_state(AWAITING_HEAD)
        self.sink = sink
        self._head_seen = False
        self.upgrade = False
        self._pending.clear()
        # A kept-alive connection the app closes as we reuse it (its idle timeout) is no
        # error: a request without a body is sent again on a new connection, once.
        self._retry = [] if self.transport is not None else None
        self.write(data)

    def send_file(self, fd: int, offset: int, count: int) -> int:
        return 0  # our frames are translated to HTTP here: they go through `write`

    def write(self, data: bytes) -> None:
        self._pending += data
        while len(self._pending) >= 4:
            n = proto.LENGTH.unpack_from(self._pending)[0]
            if len(self._pending) < 4 + n:
                return
            payload = bytes(self._pending[4:4 + n])
            del self._pending[:4 + n]
            if not self._head_seen:
                self._head_seen = True
                environ = proto.decode_environ(payload)
                self._head_only = environ.get("REQUEST_METHOD") == "HEAD"
                self.upgrade = proto.UPGRADE_KEY in environ
                head, self._chunked = http_request_head(environ)
                self._send(head)
            elif self._chunked:
                self._send(b"%x\r\n%b\r\n" % (n, payload) if n else b"0\r\n\r\n")
            elif n:
                self._send(payload)

    def _send(self, data: bytes) -> None:
        if self._retry is not None:
            if self._chunked or self._retry:
                self._retry = None  # it has a body: sending it twice is not ours to do
            else:
                self._retry.append(data)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            return
        self._outgoing.append(data)
        if not self._connecting:
            self._connecting = True
            asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            await asyncio.get_running_loop().create_connection(
                lambda: _HttpAppProtocol(self), "127.0.0.1", self.port)
        except OSError as exc:
            self._connecting = False
            self._outgoing.clear()
            self._abort(f"cannot connect to the app on port {self.port}: {exc}")

    def close(self) -> None:
        if self.state is not CLOSED:
            self.change_state(CLOSED)
        if self.transport is not None:
            self.transport.close()

    def discard(self) -> None:
        """The client went away: drop this connection; the next request opens another."""
        self.sink = None
        self._drop_connection()
        if self.state is AWAITING_HEAD or self.state is RESPONDING:
            self.change_state(IDLE)

    def _drop_connection(self) -> None:
        self.protocol = None
        if self.transport is not None:
            transport, self.transport = self.transport, None
            transport.close()

    # -- the response side -------------------------------------------------------------

    def connected(self, protocol: _HttpAppProtocol, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.protocol = protocol
        self._connecting = False
        outgoing, self._outgoing = self._outgoing, []
        transport.write(b"".join(outgoing))
        if self.sink is not None and not self._app_full:
            self.sink.on_app_writable()

    def response_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                      content_length: int) -> None:
        if self.sink is None:  # a response nobody asked for: this connection is not sane
            log.warning("Unexpected response from the app on port %d; closing", self.port)
            if self.transport is not None:
                self.transport.close()
            return
        if self.state is AWAITING_HEAD:  # (an interim 1xx before it is the app's error)
            self.change_state(RESPONDING)
        kept = SWITCHING_KEPT if status == 101 else frozenset()
        lines = []
        flags = 0
        for name, value in headers:
            lower = name.lower()
            if lower in RESPONSE_HOP_BY_HOP and lower not in kept:
                continue
            if lower == b"date":
                flags |= proto.HAS_DATE
            elif lower == b"server":
                flags |= proto.HAS_SERVER
            lines.append(name + b": " + value + b"\r\n")
        head = b"%d %b\r\n" % (status, reason or b"OK") + b"".join(lines)
        self.sink.on_response_head(content_length, flags, head)
        if self._head_only and status != 101:
            self.response_done(reusable=False)

    def upgraded(self, protocol: _HttpAppProtocol, rest: bytes) -> None:
        """The app answered 101: its connection is handed to a tunnel; ours is gone."""
        transport, self.transport, self.protocol = self.transport, None, None
        sink, self.sink = self.sink, None
        self.change_state(IDLE)
        tunnel = sink.on_upgrade(transport) if sink is not None and transport else None
        if tunnel is None:
            if transport is not None:
                transport.close()
        else:
            protocol.tunnel = tunnel
            tunnel.from_app(rest)
        self._on_response_end(self)

    def response_body(self, data: bytes) -> None:
        if self.sink is not None and not self._head_only:
            self.sink.on_response_body(data)

    def response_done(self, reusable: bool) -> None:
        if self.state is not RESPONDING:
            return
        self.change_state(IDLE)
        if not reusable and self.transport is not None:
            self.transport.close()
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.on_response_end()
            self._on_response_end(self)

    def disconnected(self, complete_on_eof: bool) -> None:
        self.transport = None
        self.protocol = None
        if self.state is RESPONDING and complete_on_eof:
            self.response_done(reusable=False)  # a close-delimited body ended
        elif self.sink is not None and self.state is AWAITING_HEAD and self._retry:
            retry, self._retry = self._retry, None
            for data in retry:
                self._send(data)
        elif self.sink is not None:
            self._abort("the app closed the connection mid-request")

    def _abort(self, reason: str) -> None:
        sink, self.sink = self.sink, None
        if self.state is AWAITING_HEAD or self.state is RESPONDING:
            self.change_state(IDLE)
        if sink is not None:
            sink.on_response_abort(reason)
            self._on_response_end(self)
        self._on_lost()


class _HttpAppProtocol(asyncio.Protocol):
    """One TCP connection to the app; parses its responses with httptools. After a 101
    it only relays bytes to its tunnel."""

    def __init__(self, channel: HttpAppChannel) -> None:
        self.channel = channel
        self.parser = httptools.HttpResponseParser(self)
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length = -1
        self.close_delimited = False
        self.tunnel: Tunnel | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.channel.connected(self, cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_app(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if self.channel.protocol is self and self.channel.upgrade:
                self.channel.upgraded(self, data[upgrade.args[0]:])
                return
            self._malformed("an unrequested protocol switch")
            return
        except httptools.HttpParserError as exc:
            self._malformed(str(exc))
            return
        if self.channel.protocol is self and self.channel.sink is not None:
            self.channel.sink.flush()

    def _malformed(self, what: str) -> None:
        log.warning("Malformed response from the app on port %d: %s", self.channel.port,
                    what)
        if self.channel.protocol is self and self.channel.transport is not None:
            self.channel.transport.close()

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.app_paused()
        elif self.channel.protocol is self:
            self.channel.writing_paused(True)

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.app_resumed()
        elif self.channel.protocol is self:
            self.channel.writing_paused(False)

    def eof_received(self) -> bool | None:
        return None  # close: a tunnel ends with either side

    def connection_lost(self, exc: Exception | None) -> None:
        if self.tunnel is not None:
            self.tunnel.app_closed()
        elif self.channel.protocol is self:
            self.channel.disconnected(complete_on_eof=self.close_delimited)

    def on_message_begin(self) -> None:
        self.reason, self.headers, self.content_length = b"", [], -1

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        lname = name.lower()
        if lname == b"content-length" and value.strip().isdigit():
            self.content_length = int(value)

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status == 101 and self.channel.upgrade:
            self.channel.response_head(status, self.reason, self.headers, -1)
            return
        if 100 <= status < 200:
            return  # an interim response: the real one follows
        chunked = any(n.lower() == b"transfer-encoding" for n, _ in self.headers)
        self.close_delimited = self.content_length < 0 and not chunked
        self.channel.response_head(status, self.reason, self.headers, self.content_length)

    def on_body(self, body: bytes) -> None:
        self.channel.response_body(body)

    def on_message_complete(self) -> None:
        if 100 <= self.parser.get_status_code() < 200:
            return
        self.channel.response_done(reusable=self.parser.should_keep_alive())
