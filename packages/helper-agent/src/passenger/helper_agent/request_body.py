"""A request's body on its way to the app: streamed as it arrives (held here, up to a
point, until a process takes the request), or buffered whole first (request buffering:
memory, then a file) and then sent with its length, the file part by sendfile(2) as fast
as the app reads. When the app answers before it has had the whole body, it is sent the
end of the body at once, so the next request on its channel starts on a frame boundary.

`RequestBodyRelay` is a part of `Request` (its base class).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from passenger.common import app_protocol as proto
from passenger.helper_agent.spool import READ_SIZE, Spool

if TYPE_CHECKING:
    from passenger.helper_agent.app_channel import Channel

MAX_BUFFERED_BODY = 64 * 1024  # of a request still waiting for a process
SENDFILE_MIN = 64 * 1024  # a buffered body's file part goes by sendfile(2) from here on
FILE_FRAME = 4 << 20      # ... in frames of at most this much


class _ClientReads(Protocol):
    """What the relay needs of the client connection: pausing its reads while the app
    (or a full buffer) cannot take more."""

    def pause_reading(self, reason: str) -> None: ...
    def resume_reading(self, reason: str) -> None: ...


class _Request(Protocol):
    """What of the request (which this is a part of) the relay uses."""

    @property
    def conn(self) -> _ClientReads: ...
    channel: Channel | None
    frames: list[bytes]
    buffered: int
    body_done: bool
    env: list[bytes] | None
    spool: Spool | None
    frame_left: int

    @property
    def over_for_app(self) -> bool: ...


class RequestBodyRelay:
    __slots__ = ()
    env: list[bytes] | None  # the request's slots
    spool: Spool | None

    def feed_body(self: _Request, data: bytes) -> None:
        if self.over_for_app:
            return  # the response is over: the app has been told the body ended
        if self.spool is not None:
            self.spool.append(data)  # request buffering: the app gets it whole
            return
        frame = proto.encode_chunk(data)
        channel = self.channel
        if channel is not None:
            channel.write(frame)
            if channel.app_full:
                self.conn.pause_reading("app")  # the app reads slower than the client sends
            return
        self.frames.append(frame)
        self.buffered += len(frame)
        if self.buffered > MAX_BUFFERED_BODY:
            self.conn.pause_reading("body")  # until a process takes it

    def end_body(self: _Request) -> None:
        if self.body_done:
            return
        self.body_done = True
        if self.over_for_app:
            return
        spool, env = self.spool, self.env
        if spool is not None and env is not None:
            # The body is whole: the app is told its length, whatever the client's framing.
            _set_field(env, b"CONTENT_LENGTH", b"%d" % spool.total)
            _drop_field(env, b"HTTP_TRANSFER_ENCODING")
            self.frames.append(proto.encode_fields(env))
            self.env = None
            if spool.file < 0:  # small: it goes in the same write as the head
                while data := spool.read():
                    self.frames.append(proto.encode_chunk(data))
                self.frames.append(proto.END)
                self.spool = None
            return
        if self.channel is not None:
            self.channel.write(proto.END)
        else:
            self.frames.append(proto.END)

    def on_app_writable(self: _Request) -> None:
        """The app's side has room again: go on sending the buffered body, or reading the
        client's."""
        channel, spool = self.channel, self.spool
        if spool is None or channel is None:
            self.conn.resume_reading("app")
            return
        while not channel.app_full:
            if self.frame_left:  # the rest of a frame announced: sendfile(2) if we can
                sent = channel.send_file(spool.file, spool.file_read,
                                         min(self.frame_left, spool.file_ahead()))
                if sent:
                    spool.skip(sent)
                else:
                    data = spool.read(min(self.frame_left, READ_SIZE))
                    channel.write(data)
                    sent = len(data)
                self.frame_left -= sent
            elif spool.file_ahead() >= SENDFILE_MIN:  # the file part: big frames
                self.frame_left = min(spool.file_ahead(), FILE_FRAME)
                channel.write(proto.LENGTH.pack(self.frame_left))
            elif data := spool.read():
                channel.write(proto.encode_chunk(data))
            else:
                channel.write(proto.END)
                spool.close()
                self.spool = None
                return

    def _cut_body(self: _Request, channel: Channel, spool: Spool) -> None:
        """The rest of the frame under way, then the end of the body: the loader reads
        up to the end, and the next request starts on a frame boundary."""
        while self.frame_left:
            data = spool.read(min(self.frame_left, READ_SIZE)) or bytes(self.frame_left)
            channel.write(data)
            self.frame_left -= len(data)
        channel.write(proto.END)
        spool.close()
        self.spool = None


def _set_field(env: list[bytes], key: bytes, value: bytes) -> None:
    """In a KEY, VALUE, ... list (keys at even places only: a value may look like a key)."""
    for i in range(0, len(env), 2):
        if env[i] == key:
            env[i + 1] = value
            return
    env += (key, value)


def _drop_field(env: list[bytes], key: bytes) -> None:
    for i in range(0, len(env), 2):
        if env[i] == key:
            del env[i:i + 2]
            return
