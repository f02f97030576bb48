"""The pace of a client connection: when we read (paused while the app, a buffer or the
pipeline is full; read deadlines while a request head or body is due) and how we write
(straight to the socket while the client takes bytes, else into a spool, memory then a
file, with the app held back only when the spool is full; a send deadline for a client
that takes nothing).

`ClientFlow` is a part of `HttpConnection` (its base class); the deadlines are checked
by FrontEnd's sweep, which calls `read_timed_out` and `send_timed_out`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, Protocol

from passenger.helper_agent.spool import Spool

if TYPE_CHECKING:
    from passenger.helper_agent.front_end import FrontEnd
    from passenger.helper_agent.http_parser import RequestParser
    from passenger.helper_agent.proxied_request import Request
    from passenger.helper_agent.static_files import StaticResponse
    from passenger.helper_agent.tunnel import Tunnel

log = logging.getLogger("passenger.helper_agent.http_front")  # one source for a connection

MAX_PIPELINED = 32  # requests read ahead on one connection before reading pauses
MAX_RESPONSE_SPOOL = 1 << 30  # per connection; beyond it the app waits for the client
REQUEST_TIMEOUT = 408
# What the read deadline is for.
HEADER, BODY, KEEPALIVE = "header", "body", "keepalive"


class _Connection(Protocol):
    """What of the connection (which this is a part of) its flow control uses."""

    front: FrontEnd
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport | None
    parser: RequestParser
    requests: collections.deque[Request]
    remote_addr: bytes
    read_pauses: set[str]
    read_deadline: float
    read_waits_for: str
    write_deadline: float
    writing_paused: bool
    spool: Spool | None
    app_held: bool
    closing: bool
    tunnel: Tunnel | None
    file_body: StaticResponse | None

    def _hold_app(self, hold: bool) -> None: ...
    def _close(self) -> None: ...
    def _send_file(self) -> None: ...
    def _reject(self, status: int, reason: str, logged_as: int = 0) -> None: ...


class ClientFlow:
    __slots__ = ()
    spool: Spool | None  # the connection's slot

    # -- reading ------------------------------------------------------------------------

    def pause_reading(self: _Connection, reason: str) -> None:
        if not self.read_pauses and self.transport is not None:
            self.transport.pause_reading()
        self.read_pauses.add(reason)

    def resume_reading(self: _Connection, reason: str) -> None:
        self.read_pauses.discard(reason)
        if not self.read_pauses and self.transport is not None:
            self.transport.resume_reading()

    # -- writing: what the client cannot take now waits in the spool ------------------

    def write(self: _Connection, data: bytes) -> None:
        if self.spool is None:
            if not self.writing_paused:
                if self.transport is not None:
                    self.transport.write(data)
                return
            self.spool = Spool(self.front.buffer_dir)
        self.spool.append(data)
        if len(self.spool) > MAX_RESPONSE_SPOOL and not self.app_held:
            self._hold_app(True)

    def splice_fd(self: _Connection) -> int:
        """Our socket, if bytes may be written to it directly now (nothing waits in the
        transport or the spool, and the client takes bytes), else -1."""
        transport = self.transport
        if transport is None or self.spool is not None or self.writing_paused \
                or self.tunnel is not None or self.file_body is not None \
                or transport.get_write_buffer_size():
            return -1
        sock = transport.get_extra_info("socket")
        return -1 if sock is None else int(sock.fileno())

    def pause_writing(self: _Connection) -> None:
        self.writing_paused = True
        if self.tunnel is not None:
            self.tunnel.client_paused()
        else:
            self.write_deadline = self.loop.time() + self.front.send_timeout

    def resume_writing(self: _Connection) -> None:
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

    def _hold_app(self: _Connection, hold: bool) -> None:
        """Backpressure to the app, only when the spool is full."""
        self.app_held = hold
        channel = self.requests[0].channel if self.requests else None
        if channel is not None:
            if hold:
                channel.pause()
            else:
                channel.resume()

    # -- deadlines -----------------------------------------------------------------------

    def _wait_to_read(self: _Connection, what: str, timeout: float) -> None:
        self.read_waits_for = what
        self.read_deadline = self.loop.time() + timeout

    def read_timed_out(self: _Connection) -> None:
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

    def send_timed_out(self: _Connection) -> None:
        """The client took nothing for --send-timeout: it is gone, or as good as."""
        self.write_deadline = 0.0
        log.info("Client %s timed out reading the response (--send-timeout %g s); "
                 "closing", self.remote_addr.decode(), self.front.send_timeout)
        if self.transport is not None:
            self.transport.abort()
