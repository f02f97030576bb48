"""The persistent connection from the helper agent to one app process (see
`passenger.common.app_protocol` for the frames), and what both kinds of channel share:
the `Channel` interface and the exchange's lifecycle, `ChannelState`."""

from __future__ import annotations

import asyncio
import enum
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

from passenger.common import app_protocol as proto
from passenger.common.lifecycle import Transitions
from passenger.helper_agent.splice_pump import SplicePump

if TYPE_CHECKING:
    from passenger.helper_agent.tunnel import Tunnel

log = logging.getLogger(__name__)
LENGTH = proto.LENGTH
MAX_RESPONSE_HEAD = 1 << 20  # a head frame larger than this is not a sane app's
SPLICE_MIN = 128 * 1024  # a body frame with this much still to come goes by splice(2)


class ChannelState(enum.Enum):
    IDLE = "idle"                    # connected; no request on it
    AWAITING_HEAD = "awaiting_head"  # a request sent; no response head yet
    RESPONDING = "responding"        # relaying a response
    BROKEN = "broken"                # the app broke the protocol: closing, never reused
    DISCARDED = "discarded"          # closed on purpose: the request's client went away
    LOST = "lost"                    # the connection is gone
    CLOSED = "closed"                # an HTTP channel closed for good (its process ended)


IDLE, AWAITING_HEAD, RESPONDING = (ChannelState.IDLE, ChannelState.AWAITING_HEAD,
                                   ChannelState.RESPONDING)
BROKEN, DISCARDED, LOST = ChannelState.BROKEN, ChannelState.DISCARDED, ChannelState.LOST
APP_CHANNEL_LIFECYCLE = Transitions("app channel", [
    (IDLE, AWAITING_HEAD, "a request starts on it"),
    (AWAITING_HEAD, RESPONDING, "the response head was read whole"),
    (AWAITING_HEAD, IDLE, "the response ended (or was aborted) with no head: the request "
                          "had been answered by the pool already"),
    (RESPONDING, IDLE, "the end or abort frame of the response"),
    *((live, BROKEN, "the app broke the frame protocol")
      for live in (IDLE, AWAITING_HEAD, RESPONDING)),
    *((live, DISCARDED, "the request's client went away")
      for live in (IDLE, AWAITING_HEAD, RESPONDING)),
    *((live, LOST, "the connection closed (the process is exiting, or broke)")
      for live in (IDLE, AWAITING_HEAD, RESPONDING, BROKEN)),
])


class ResponseSink(Protocol):
    """What receives an app's response: the front end's request."""

    def on_response_head(self, content_length: int, flags: int, head: bytes) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self) -> None: ...
    def on_response_abort(self, reason: str, status: int = 502) -> None: ...
    def on_upgrade(self, app: asyncio.Transport) -> Tunnel | None: ...
    def on_app_writable(self) -> None: ...
    def flush(self) -> None: ...
    def splice_target(self, count: int) -> tuple[int, int] | None: ...
    def on_response_spliced(self, moved: int) -> None: ...


class Channel(Protocol):
    """A way to send one request at a time to an app process and relay its response:
    `AppChannel` (our frames over a Unix socket) or `HttpAppChannel` (HTTP to a generic
    app)."""

    sink: ResponseSink | None

    @property
    def available(self) -> bool:
        """Idle and usable: a request may start on it."""
    def take_sink(self) -> ResponseSink | None:
        """The pool answers the request itself: the channel forgets it."""
    @property
    def app_full(self) -> bool: ...
    def start(self, sink: ResponseSink, data: bytes) -> None: ...
    def write(self, data: bytes) -> None: ...
    def send_file(self, fd: int, offset: int, count: int) -> int: ...
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


class AppChannel(asyncio.Protocol):
    """Our frames over a Unix socket. Body frames are relayed as their bytes arrive (a
    large frame is never held whole); only a response head is read complete first.
    The rest of a large body frame goes from socket to socket by splice(2) when the
    client takes bytes as fast as they come (`SplicePump`)."""

    def __init__(self, on_response_end: Callable[[Channel], None],
                 on_lost: Callable[[], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()   # an incomplete frame length or response head
        self.frame_remaining = 0    # bytes of the current body frame still to come
        self.sink: ResponseSink | None = None
        self.state = IDLE
        self.app_full = False   # our writes wait in the transport: the app reads slowly
        self.held = False       # paused by the request: its client reads slowly
        self.pump: SplicePump | None = None  # kept for the channel's life once made
        self.pumping = False    # the pump is moving a body frame: the transport waits
        self._on_response_end = on_response_end
        self._on_lost = on_lost

    def change_state(self, new: ChannelState) -> None:
        APP_CHANNEL_LIFECYCLE.check(self.state, new)
        self.state = new

    @property
    def available(self) -> bool:
        return self.state is IDLE and self.transport is not None

    def take_sink(self) -> ResponseSink | None:
        sink, self.sink = self.sink, None
        return sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def pause(self) -> None:
        self.held = True
        if self.transport is not None and not self.pumping:
            self.transport.pause_reading()

    def resume(self) -> None:
        self.held = False
        if self.transport is not None and not self.pumping:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.app_full = True

    def resume_writing(self) -> None:
        self.app_full = False
        if self.sink is not None:
            self.sink.on_app_writable()

    def start(self, sink: ResponseSink, data: bytes) -> None:
        self.change_state(AWAITING_HEAD)
        self.sink = sink
        self.write(data)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send_file(self, fd: int, offset: int, count: int) -> int:
        """Up to `count` bytes of a file straight to the app's socket with sendfile(2),
        when nothing waits in the transport -> bytes sent (0: not now; then `write`,
        which pauses us until the app has read)."""
        transport = self.transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size():
            return 0
        try:
            return os.sendfile(transport.get_extra_info("socket").fileno(), fd, offset, count)
        except OSError:  # full (or broken: the transport finds out when it writes)
            return 0

    def close(self) -> None:
        self._close_pump()
        if self.transport is not None:
            self.transport.close()

    def _close_pump(self) -> None:
        if self.pump is not None:
            self.pump.close()
            self.pump = None
        self.pumping = False

    def discard(self) -> None:
        """Close on purpose (the client went away): the loader sees EOF/EPIPE and stops."""
        self.sink = None
        if self.state is LOST or self.state is BROKEN:
            return  # closed already, and its loss reported
        self.change_state(DISCARDED)
        self.close()

    def data_received(self, data: bytes) -> None:
        if self.buffer:
            self.buffer += data
            data = bytes(self.buffer)
            self.buffer.clear()
        sink = self.sink
        pos = 0
        size = len(data)
        if self.frame_remaining:  # the rest of a body frame: as it comes
            pos = min(self.frame_remaining, size)
            self.frame_remaining -= pos
            if sink is not None:
                sink.on_response_body(data if pos == size else data[:pos])
        elif self.state is AWAITING_HEAD and sink is not None:  # a head, read whole
            if size < 4:
                self.buffer += data
                return
            n = LENGTH.unpack_from(data)[0]
            if n == proto.ABORT_MARK or n > MAX_RESPONSE_HEAD:
                self._broken(f"a response head of {n} bytes")
                return
            if size < 4 + n:
                self.buffer += data
                return
            self.change_state(RESPONDING)
            try:
                length, flags, head = proto.decode_response_head(data[4:4 + n])
            except proto.ProtocolError as exc:
                self._broken(str(exc))
                return
            pos = 4 + n
            sink.on_response_head(length, flags, head)
        while size - pos >= 4:  # body frames, the end, or an abort
            n = LENGTH.unpack_from(data, pos)[0]
            pos += 4
            if n == 0:
                self._finish()
                sink = None
            elif n == proto.ABORT_MARK:
                self._finish(abort="the application failed while sending its response")
                sink = None
            elif sink is None:
                log.warning("App process sent data with no request in progress; closing")
                self.close()
                return
            else:
                take = min(n, size - pos)
                self.frame_remaining = n - take
                sink.on_response_body(data[pos:pos + take])
                pos += take
        if pos < size:
            self.buffer += data[pos:]
        if sink is not None:
            sink.flush()
            if self.frame_remaining >= SPLICE_MIN:
                self._splice(sink)

    # -- large body frames, socket to socket -------------------------------------------

    def _splice(self, sink: ResponseSink) -> bool:
        """Hand the rest of this body frame to the pump, if the request can take it so.
        -> whether the pump took it (it may even have finished already)."""
        transport = self.transport
        target = sink.splice_target(self.frame_remaining)
        if target is None or transport is None:
            return False
        client_fd, count = target
        try:
            if self.pump is None:
                self.pump = SplicePump(asyncio.get_running_loop(),
                                       transport.get_extra_info("socket").fileno())
            if not self.pumping:
                self.pumping = True
                transport.pause_reading()
            self.pump.run(client_fd, count, self._spliced)
        except OSError as exc:  # out of descriptors: the usual way it is
            log.debug("No splice for this response (%s)", exc)
            self._close_pump()
            self._resume_transport()
            return False
        return True

    def _spliced(self, moved: int, leftover: bytes, finished: bool) -> None:
        self.frame_remaining -= moved + len(leftover)
        sink = self.sink
        if sink is not None:
            sink.on_response_spliced(moved)
            if leftover:
                sink.on_response_body(leftover)
                sink.flush()
        if finished and sink is not None and not self.frame_remaining:
            # The next frame's length, read here: if it is another large body frame
            # (a file goes in frames of a megabyte) the pump goes on with it.
            asyncio.get_running_loop().call_soon(self._next_frame)
            return
        self._resume_transport()

    def _next_frame(self) -> None:
        header = b""
        if self.pump is not None and self.sink is not None and not self.held:
            try:
                header = os.read(self.pump.source, LENGTH.size)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                header = b""
        if len(header) == LENGTH.size and self.sink is not None:
            n = LENGTH.unpack(header)[0]
            if SPLICE_MIN <= n < proto.ABORT_MARK:
                self.frame_remaining = n
                if self._splice(self.sink):
                    return
                self.frame_remaining = 0  # it goes the usual way, header and all
        self._resume_transport()
        if header:  # a frame of another kind (or one to relay ourselves) begins with it
            self.data_received(header)

    def _resume_transport(self) -> None:
        self.pumping = False
        if self.transport is not None and not self.held:
            self.transport.resume_reading()

    def _broken(self, what: str) -> None:
        """The app broke the frame protocol: this connection cannot be trusted again."""
        log.warning("App process broke the frame protocol (%s); closing its connection",
                    what)
        self.change_state(BROKEN)
        self._finish(abort=f"the application sent {what}")
        self.close()

    def _finish(self, abort: str = "") -> None:
        if self.state is AWAITING_HEAD or self.state is RESPONDING:
            self.change_state(IDLE)
        sink, self.sink = self.sink, None
        if sink is not None:
            if abort:
                sink.on_response_abort(abort)
            else:
                sink.on_response_end()
        self._on_response_end(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._close_pump()
        if self.state is not DISCARDED:
            self.change_state(LOST)
            self._on_lost()
