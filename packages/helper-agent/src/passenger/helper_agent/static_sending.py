"""Sending a file from public/ (found by `static_files`) on a client connection: its
head, then its bytes by sendfile(2) while the socket takes them, or a chunk at a time
through the transport when it is full, so a slow client pauses us like any other.

`StaticFileSender` is a part of `HttpConnection` (its base class).
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Protocol

from passenger.helper_agent.error_pages import http_date

if TYPE_CHECKING:
    from passenger.helper_agent.proxied_request import Request
    from passenger.helper_agent.spool import Spool
    from passenger.helper_agent.static_files import StaticResponse

FILE_CHUNK = 1 << 20          # a static file: bytes per sendfile(2)
TRANSPORT_CHUNK = 64 * 1024   # ... and per write when the socket is full
STATIC_REASONS = {200: b"OK", 206: b"Partial Content", 304: b"Not Modified",
                  416: b"Range Not Satisfiable"}


class _Connection(Protocol):
    """What of the connection (which this is a part of) sending a file uses."""

    transport: asyncio.Transport | None
    server_header: bytes
    spool: Spool | None
    writing_paused: bool
    file_body: StaticResponse | None
    file_request: Request | None

    def write(self, data: bytes) -> None: ...
    def _send_file(self) -> None: ...
    def _close(self) -> None: ...


class StaticFileSender:
    __slots__ = ()
    file_body: StaticResponse | None  # the connection's slots
    file_request: Request | None

    def _serve_static(self: _Connection, request: Request, found: StaticResponse) -> None:
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

    def _send_file(self: _Connection) -> None:
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
