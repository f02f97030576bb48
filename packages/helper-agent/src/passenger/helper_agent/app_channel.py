"""The persistent connection from the helper agent to one app process (see
`passenger.common.app_protocol` for the frames)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol, cast

from passenger.common import app_protocol as proto

log = logging.getLogger(__name__)
LENGTH = proto.LENGTH


class ResponseSink(Protocol):
    """What receives an app's response: the front end's request."""

    def on_response_head(self, content_length: int, head: bytes) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self) -> None: ...
    def on_response_abort(self, reason: str, status: int = 502) -> None: ...
    def flush(self) -> None: ...


class Channel(Protocol):
    """A way to send one request at a time to an app process and relay its response:
    `AppChannel` (our frames over a Unix socket) or `HttpAppChannel` (HTTP to a generic
    app)."""

    sink: ResponseSink | None

    @property
    def available(self) -> bool: ...
    def start(self, sink: ResponseSink, data: bytes) -> None: ...
    def write(self, data: bytes) -> None: ...
    def discard(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def close(self) -> None: ...


class ReadPausing:
    """Pausing the app's side while a slow client catches up (both channel kinds)."""

    transport: asyncio.Transport | None

    def pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()


class AppChannel(ReadPausing, asyncio.Protocol):
    def __init__(self, on_response_end: Callable[[Channel], None],
                 on_lost: Callable[[], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sink: ResponseSink | None = None
        self.head_seen = False
        self.discarded = False  # closed on purpose: not a sign the process is broken
        self._on_response_end = on_response_end
        self._on_lost = on_lost

    @property
    def available(self) -> bool:
        return self.transport is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def start(self, sink: ResponseSink, data: bytes) -> None:
        self.sink = sink
        self.head_seen = False
        self.write(data)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def discard(self) -> None:
        """Close on purpose (the client went away): the loader sees EOF/EPIPE and stops."""
        self.discarded = True
        self.sink = None
        self.close()

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        offset = 0
        size = len(buf)
        while size - offset >= 4:
            n = LENGTH.unpack_from(buf, offset)[0]
            if n == proto.ABORT_MARK:
                offset += 4
                self._finish(abort="the application failed while sending its response")
                continue
            if size - offset - 4 < n:
                break
            payload = bytes(buf[offset + 4:offset + 4 + n])
            offset += 4 + n
            sink = self.sink
            if sink is None:
                log.warning("App process sent data with no request in progress; closing")
                self.close()
                return
            if not self.head_seen:
                self.head_seen = True
                length, head = proto.decode_response_head(payload)
                sink.on_response_head(length, head)
            elif n:
                sink.on_response_body(payload)
            else:
                self._finish()
        del buf[:offset]
        if self.sink is not None:
            self.sink.flush()

    def _finish(self, abort: str = "") -> None:
        sink, self.sink = self.sink, None
        if sink is not None:
            if abort:
                sink.on_response_abort(abort)
            else:
                sink.on_response_end()
        self._on_response_end(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.discarded:
            self._on_lost()
