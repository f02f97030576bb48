"""One client request on its way: queued, then bound to a channel of an app process, then
relaying the app's response with HTTP framing for the client.

The channel belongs to the request until both sides are done with it: when the response
ends before the whole request body was sent, the app is sent the end of the body at once
(the rest is dropped), so the next request on that channel starts on a frame boundary.
When the client goes away mid-exchange, the channel is abandoned (closed and replaced),
which the app sees as EOF/EPIPE and stops working for nobody.

The exchange's lifecycle is `RequestState` with its table `REQUEST_LIFECYCLE`; the
request body's own progress (`body_done`) runs beside it, since a response may end
before the body has. The body's way to the app is `request_body` (a base class of
`Request`); whether an app's response head may go out is `response_head`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import TYPE_CHECKING, Protocol

from passenger.common import app_protocol as proto
from passenger.common.lifecycle import Transitions
from passenger.helper_agent.app_channel import Channel
from passenger.helper_agent.app_process import AppProcess
from passenger.helper_agent.error_pages import error_response, http_date, simple_page
from passenger.helper_agent.request_body import RequestBodyRelay
from passenger.helper_agent.response_head import (
    VALID_HEADS,
    InvalidResponseHead,
    check_response_head,
)
from passenger.helper_agent.spool import Spool
from passenger.helper_agent.tunnel import Tunnel

if TYPE_CHECKING:
    from passenger.helper_agent.group import Group
    from passenger.helper_agent.request_head import RequestHead
    from passenger.helper_agent.static_files import StaticResponse

log = logging.getLogger(__name__)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class RequestState(enum.Enum):
    WAITING = "waiting"          # for a process (queued, or its body being buffered)
    IN_APP = "in_app"            # on a channel of a process; no response head yet
    RESPONDING = "responding"    # relaying the app's response
    RELEASED = "released"        # the channel went back to its process
    FINISHED = "finished"        # answered; the connection has been told
    ABANDONED = "abandoned"      # the client went away first


WAITING, IN_APP, RESPONDING = RequestState.WAITING, RequestState.IN_APP, RequestState.RESPONDING
RELEASED, FINISHED, ABANDONED = (RequestState.RELEASED, RequestState.FINISHED,
                                 RequestState.ABANDONED)
REQUEST_LIFECYCLE = Transitions("request", [
    (WAITING, IN_APP, "a process took it (assign)"),
    (WAITING, FINISHED, "answered without the app: a static file, or an error (queue "
                        "full or timed out, spawning failed, no app, shutting down)"),
    (WAITING, ABANDONED, "the client left while it waited"),
    (IN_APP, RESPONDING, "the app's response head was valid"),
    (IN_APP, RELEASED, "answered with an error instead: an invalid head, the process "
                       "broke or exited, --max-request-time"),
    (IN_APP, ABANDONED, "the client left while the app worked"),
    (RESPONDING, RELEASED, "the response ended, or broke off"),
    (RESPONDING, FINISHED, "the app switched protocols: the connection is a tunnel"),
    (RESPONDING, ABANDONED, "the client left during the response"),
    (RELEASED, FINISHED, "the connection was told"),
    (RELEASED, ABANDONED, "the client left while the answer was written"),
])


class ClientConnection(Protocol):
    """What a request needs of the client connection it came on."""

    writing_paused: bool
    server_header: bytes

    def write(self, data: bytes) -> None: ...
    def splice_fd(self) -> int: ...
    def pause_reading(self, reason: str) -> None: ...
    def resume_reading(self, reason: str) -> None: ...
    def request_finished(self, request: Request) -> None: ...
    def start_tunnel(self, app: asyncio.Transport) -> Tunnel | None: ...


class Request(RequestBodyRelay):
    __slots__ = ("body_done", "buffered", "bytes_sent", "channel", "chunked", "conn",
                 "drop_body", "env", "expect_continue", "frame_left", "frames", "group",
                 "head", "head_only", "http10", "keep_alive", "out", "process", "received",
                 "remaining", "spool", "started", "state", "static", "status", "upgrade")

    def __init__(self, conn: ClientConnection, frames: list[bytes], head_only: bool,
                 keep_alive: bool, http10: bool, group: Group | None,
                 expect_continue: bool = False, upgrade: bool = False) -> None:
        self.conn = conn
        self.head: RequestHead | None = None  # for passenger-status --show=requests
        self.static: StaticResponse | None = None  # a file from public/ answers it
        self.frames = frames            # request frames not yet sent to the app
        self.buffered = 0               # bytes of body in `frames`
        self.head_only = head_only
        self.keep_alive = keep_alive
        self.http10 = http10
        self.expect_continue = expect_continue
        self.group = group
        self.state = WAITING
        self.body_done = False          # the client's body is whole (or there was none)
        self.chunked = False
        self.drop_body = False          # HEAD, 1xx, 204, 304: the app's body is not sent
        self.upgrade = upgrade          # a tunnel if the app switches protocols
        self.remaining = -1             # response body bytes still due (Content-Length)
        self.process: AppProcess | None = None
        self.channel: Channel | None = None
        self.started = time.monotonic()
        self.status = 0
        self.bytes_sent = 0
        self.out: list[bytes] = []      # response bytes not yet written to the client
        self.env: list[bytes] | None = None  # a buffered request's fields, until its body
        self.spool: Spool | None = None  # is whole here (request buffering)
        self.received = 0               # bytes of the request body so far
        self.frame_left = 0             # of a body frame announced to the app, to send

    def change_state(self, new: RequestState) -> None:
        REQUEST_LIFECYCLE.check(self.state, new)
        self.state = new

    @property
    def done(self) -> bool:
        """Answered, or its client gone: nothing more is sent for it."""
        return self.state is FINISHED or self.state is ABANDONED

    @property
    def over_for_app(self) -> bool:
        """The app has been told the body ended (or never will be sent to): the rest
        of the client's body is dropped."""
        state = self.state
        return state is RELEASED or state is FINISHED or state is ABANDONED

    # -- from the pool --------------------------------------------------------------

    def assign(self, process: AppProcess, channel: Channel) -> None:
        self.change_state(IN_APP)
        self.process = process
        self.channel = channel
        if self.expect_continue and not self.http10:
            self.conn.write(CONTINUE)  # now, not before: earlier responses come first
        frames, self.frames = self.frames, []
        channel.start(self, b"".join(frames))
        if self.spool is not None:
            self.on_app_writable()  # a body from its file, as fast as the app takes it
        if self.buffered:
            self.buffered = 0
            self.conn.resume_reading("body")

    def fail(self, status: int, reason: str, page: str | None = None) -> None:
        if self.done:
            return
        self.release_channel()
        self.keep_alive = False
        response = error_response(status, page or simple_page(status, reason), close=True,
                                  head_only=self.head_only, server=self.conn.server_header)
        self.status = status
        self.bytes_sent = len(response) - response.index(b"\r\n\r\n") - 4
        self.conn.write(response)
        self._finish()

    def release_channel(self) -> None:
        """The app is done with this request: it gets the end of the body if it has not
        had it, and its channel reads again (it may have been paused for a slow client)."""
        channel = self.channel
        if channel is None or self.state is RELEASED:
            return
        self.change_state(RELEASED)
        if not self.body_done:
            channel.write(proto.END)
        elif self.spool is not None:  # it answered before it had all of a buffered body
            self._cut_body(channel, self.spool)
        channel.resume()
        self.channel = None
        self.conn.resume_reading("app")  # if the client was waiting for the app to read

    def abandon(self) -> None:
        """The client went away (or sent garbage) before the exchange was over."""
        if self.done:
            return
        was = self.state
        self.change_state(ABANDONED)
        self._drop_spool()
        if self.channel is not None and was is not RELEASED and self.process is not None \
                and self.group is not None:
            self.group.abandon_channel(self.process, self.channel)
            self.channel = None
        elif self.process is None and self.group is not None:
            self.group.cancel(self)

    # -- from the app channel ------------------------------------------------------

    def on_response_head(self, content_length: int, flags: int, head: bytes) -> None:
        if self.state is not IN_APP:
            return  # answered already (the client left, or the head was invalid)
        status = VALID_HEADS.get(head)
        if not status:
            try:
                status = check_response_head(head)
            except InvalidResponseHead as exc:
                self._invalid_response(str(exc))
                return
        if status < 200 and not (status == 101 and self.upgrade):
            self._invalid_response(f"the interim status {status} as its response")
            return
        self.change_state(RESPONDING)
        self.status = status
        extra = b""
        if status < 200 or status == 204 or status == 304:
            self.drop_body = True  # RFC 9110: never a body, nor a length for one
        elif content_length >= 0:  # the app's own length (for HEAD: only if it gave one)
            extra = b"Content-Length: %d\r\n" % content_length
            self.remaining = content_length
            self.drop_body = self.head_only
        elif self.head_only:
            self.drop_body = True
        elif self.http10:
            self.keep_alive = False
        else:
            self.chunked = True
            extra = b"Transfer-Encoding: chunked\r\n"
        if status == 101:
            pass  # the app's Connection: upgrade stands
        elif not self.keep_alive:
            extra += b"Connection: close\r\n"
        elif self.http10:
            extra += b"Connection: keep-alive\r\n"
        if not flags & proto.HAS_DATE:
            extra += b"Date: " + http_date() + b"\r\n"
        if not flags & proto.HAS_SERVER:
            extra += self.conn.server_header
        self.out.append(b"HTTP/1.1 " + head + extra + b"\r\n")

    def _invalid_response(self, what: str) -> None:
        process = self.process.pid if self.process is not None else "?"
        app = self.group.name if self.group is not None else "the app"
        log.warning("App process %s (%s) sent %s; answering 502", process, app, what)
        self.fail(502, "The application sent an invalid response")

    def on_response_body(self, data: bytes) -> None:
        if self.drop_body or self.state is not RESPONDING:
            return
        if self.remaining >= 0:  # never more than the app's own Content-Length
            if len(data) > self.remaining:
                data = data[:self.remaining]
                self.keep_alive = False
            self.remaining -= len(data)
            if not data:
                return
        self.bytes_sent += len(data)
        self.out.append(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)

    def splice_target(self, count: int) -> tuple[int, int] | None:
        """The client's descriptor and how many of the `count` body bytes coming may go
        to it by splice(2): only unframed bytes (not chunked), all of them due, while
        the client has nothing pending."""
        if self.drop_body or self.state is not RESPONDING or self.chunked or self.out:
            return None
        fd = self.conn.splice_fd()
        if fd < 0:
            return None
        return fd, count if self.remaining < 0 else min(count, self.remaining)

    def on_response_spliced(self, moved: int) -> None:
        self.bytes_sent += moved
        if self.remaining >= 0:
            self.remaining -= moved

    def on_upgrade(self, app: asyncio.Transport) -> Tunnel | None:
        """The app switched protocols (101): the connection becomes a tunnel."""
        self.flush()
        tunnel = self.conn.start_tunnel(app)
        self._finish()
        return tunnel

    def on_response_end(self) -> None:
        if self.state is not RESPONDING and self.state is not IN_APP:
            return
        if self.chunked:
            self.out.append(b"0\r\n\r\n")
        if self.remaining > 0 and not self.drop_body:
            self.keep_alive = False  # shorter than announced: only a close tells the client
        self.flush()
        self.release_channel()
        self._finish()

    def flush(self) -> None:
        """One write for what one read from the app brought (head and body together)."""
        if self.out:
            self.conn.write(b"".join(self.out) if len(self.out) > 1 else self.out[0])
            self.out.clear()

    def on_response_abort(self, reason: str, status: int = 502) -> None:
        if self.state is not RESPONDING and self.state is not IN_APP:
            return
        log.warning("Request to %s failed: %s", self.group.name if self.group else "app",
                    reason)
        responding = self.state is RESPONDING
        self.release_channel()
        if responding:
            self.keep_alive = False  # the client cannot tell the response is cut otherwise
            self.flush()
            self._finish()
        elif status == 502:
            self.fail(502, f"Incomplete response received from the application: {reason}")
        else:
            self.fail(status, reason)

    def complete(self) -> None:
        """Answered without the app (a static file): the connection goes on."""
        self._finish()

    def _finish(self) -> None:
        if not self.done:
            self.change_state(FINISHED)
            self._drop_spool()
            self.conn.request_finished(self)

    def _drop_spool(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None

