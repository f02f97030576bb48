"""A strict, incremental HTTP/1.x request parser (RFC 9110, RFC 9112): the state machine
over a connection's bytes, from request head to body to the next request.

It accepts what RFC 9112 allows (any token method, any header name that is a token,
chunk extensions, trailers, asterisk-form with OPTIONS, absolute-form) and answers what
it forbids with an `HttpError` carrying the status to send; after an error, or after a
request that ends the connection, it reads nothing more. A whole head is read by
`request_head`, a chunked body's lines by `chunked_body`.

The limits (gunicorn's, with its option names) are enforced while a head is still
arriving, so a client cannot make us hold more than they allow.
"""

from __future__ import annotations

from dataclasses import dataclass

from passenger.helper_agent.chunked_body import ChunkedBodyDecoder
from passenger.helper_agent.http_errors import (
    HttpError,
    field_too_large,
    line_too_long,
    too_many_fields,
)
from passenger.helper_agent.parser_states import (
    BODY,
    CHUNK_DATA,
    CHUNK_DATA_END,
    CHUNK_SIZE_STATE,
    DONE,
    HEAD_STATE,
    HELD,
    TRAILERS,
)
from passenger.helper_agent.request_head import HeadReader, RequestSink

# HttpError: what feed raises; RequestSink: what the parser calls.
__all__ = ["HttpError", "Limits", "RequestParser", "RequestSink"]


@dataclass(frozen=True)
class Limits:
    """gunicorn's names and meanings; 0 means the largest value allowed."""

    request_line: int = 8190
    fields: int = 100
    field_size: int = 8190


class RequestParser(HeadReader, ChunkedBodyDecoder):
    __slots__ = ("buffer", "field_limit", "fields_limit", "head_lines", "held", "keep_alive",
                 "line_limit", "remaining", "scan_pos", "sink", "state", "trailer_lines")

    def __init__(self, sink: RequestSink, limits: Limits | None = None) -> None:
        limits = limits or Limits()
        self.sink = sink
        self.line_limit = limits.request_line or 65536
        self.field_limit = limits.field_size or 65536
        self.fields_limit = limits.fields or 32768
        self.state = HEAD_STATE
        self.buffer = bytearray()      # an incomplete head, chunk-size line or trailer
        self.remaining = 0             # of the body or the current chunk
        self.held = bytearray()        # bytes after an upgrade request's head
        self.keep_alive = True
        self.trailer_lines = 0
        self.scan_pos = 0              # where the head's unchecked lines start
        self.head_lines = 0            # complete lines of the head checked so far

    # -- the public side ------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Parse `data`; calls the sink; raises HttpError (and then reads nothing more)."""
        try:
            if self.state is HEAD_STATE and not self.buffer:
                end = data.find(b"\r\n\r\n")
                if end == len(data) - 4 and end > 0 and data[0] != 13:
                    self._parse_head(data, 0, end)  # the usual case: one whole head
                    return
            self._feed(data)
        except HttpError:
            self.state = DONE
            raise

    def feed_eof(self) -> None:
        """The client will send nothing more."""
        state = self.state
        self.state = DONE
        if state is HEAD_STATE:
            if self.buffer.strip(b"\r\n"):
                raise HttpError(400, "The request ended before its head was complete")
        elif state is not HELD and state is not DONE:
            raise HttpError(400, "The request ended before its body was complete")

    def hold(self) -> None:
        """Stop parsing: what comes next is kept for a tunnel (see `take_held`)."""
        self.state = HELD

    def take_held(self) -> bytes:
        held = bytes(self.held)
        self.held.clear()
        return held

    def stop(self) -> None:
        self.state = DONE

    @property
    def in_message(self) -> bool:
        """Whether part of a request has arrived and the rest has not."""
        if self.state is HEAD_STATE:
            return bool(self.buffer.strip(b"\r\n"))
        return self.state is not DONE and self.state is not HELD

    # -- the state machine ----------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        pos = 0
        end = len(data)
        while pos < end:
            state = self.state
            if state is HEAD_STATE:
                pos = self._feed_head(data, pos)
            elif state is BODY or state is CHUNK_DATA:
                take = min(self.remaining, end - pos)
                self.sink.on_body(data if take == end else data[pos:pos + take])
                pos += take
                self.remaining -= take
                if not self.remaining:
                    if state is BODY:
                        self._message_complete()
                    else:
                        self.state = CHUNK_DATA_END
            elif state is CHUNK_SIZE_STATE or state is CHUNK_DATA_END or state is TRAILERS:
                pos = self._feed_line(data, pos)
            elif state is HELD:
                self.held += data[pos:]
                return
            else:  # DONE: after an error or the last request of the connection
                return

    def _feed_head(self, data: bytes, pos: int) -> int:
        buffer = self.buffer
        if not buffer:
            while data.startswith(b"\r\n", pos):  # RFC 9112 2.2: empty lines before
                pos += 2
            if pos == len(data):
                return pos
            end = data.find(b"\r\n\r\n", pos)
            if end >= 0:
                self._parse_head(data, pos, end)
                return end + 4
            buffer += data[pos:]
            self._check_partial_head()
            return len(data)
        before = len(buffer)
        buffer += data[pos:]
        cut = 0
        if buffer.startswith(b"\r\n"):  # only empty lines came before
            cut = len(buffer) - len(buffer.lstrip(b"\r\n"))
            cut -= cut % 2
            del buffer[:cut]
            self.scan_pos = self.head_lines = 0
        end = buffer.find(b"\r\n\r\n", max(0, before - cut - 3))
        if end < 0:
            self._check_partial_head()
            return len(data)
        head = bytes(buffer[:end + 4])
        buffer.clear()
        self.scan_pos = self.head_lines = 0
        self._parse_head(head, 0, end)
        return pos + end + 4 + cut - before  # where the head ended, in data

    def _check_partial_head(self) -> None:
        """Enforce the limits on a head that has not ended yet; each line is looked at
        once, however the head is cut into pieces."""
        buffer = self.buffer
        pos = self.scan_pos
        while True:
            eol = buffer.find(b"\r\n", pos)
            if eol < 0:
                break
            self._check_head_line(buffer, pos, eol)
            self.head_lines += 1
            pos = eol + 2
        self.scan_pos = pos
        tail = len(buffer) - buffer.endswith(b"\r")
        if tail > pos:
            self._check_head_line(buffer, pos, tail)

    def _check_head_line(self, buffer: bytearray, start: int, end: int) -> None:
        if buffer.find(b"\n", start, end) >= 0 or buffer.find(b"\r", start, end) >= 0:
            raise HttpError(400, "A bare CR or LF in the request head (lines must end in "
                                 "CRLF)")
        size = end - start
        if self.head_lines == 0:
            if size > self.line_limit:
                raise line_too_long(self.line_limit)
            return
        if self.head_lines > self.fields_limit:
            raise too_many_fields(self.fields_limit)
        if size + 2 > self.field_limit:  # gunicorn counts a field's CRLF
            raise field_too_large(self.field_limit)

    def _message_complete(self) -> None:
        state = self.state
        if state is not HELD and state is not DONE:
            self.state = HEAD_STATE if self.keep_alive else DONE
        self.sink.on_message_complete()
