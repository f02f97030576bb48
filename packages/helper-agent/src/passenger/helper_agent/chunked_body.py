"""Decoding a chunked request body (RFC 9112 7.1): the line-based parts between the
chunks' data, that is chunk-size lines (with extensions), the CRLF after each chunk's
data, and the trailer section, which is checked, counted, then dropped.

`ChunkedBodyDecoder` is a part of `RequestParser` (its base class): the parser hands it
the bytes while in a chunk-line state and passes the chunks' data to the sink itself.
"""

from __future__ import annotations

from typing import Protocol

from passenger.helper_agent.http_errors import (
    HttpError,
    field_too_large,
    header_error,
    too_many_fields,
)
from passenger.helper_agent.http_grammar import CHUNK_SIZE, FIELD
from passenger.helper_agent.parser_states import (
    CHUNK_DATA,
    CHUNK_DATA_END,
    CHUNK_SIZE_STATE,
    TRAILERS,
    State,
)

MAX_CHUNK_LINE = 4096  # a chunk-size line with its extensions
NOT_IN_TRAILERS = frozenset((b"content-length", b"transfer-encoding", b"host"))


class _Parser(Protocol):
    """What of the parser (which this is a part of) the decoder uses."""

    state: State
    buffer: bytearray
    remaining: int
    field_limit: int
    fields_limit: int
    trailer_lines: int

    def _message_complete(self) -> None: ...
    def _line_limit(self) -> int: ...
    def _chunk_line_too_long(self) -> HttpError: ...
    def _check_trailer(self, line: bytes) -> None: ...


class ChunkedBodyDecoder:
    __slots__ = ()

    def _feed_line(self: _Parser, data: bytes, pos: int) -> int:
        """The line-based parts of a chunked body: sizes, the CRLF after data, trailers."""
        buffer = self.buffer
        eol = data.find(b"\n", pos)
        if eol < 0:
            buffer += data[pos:]
            if len(buffer) > self._line_limit():
                raise self._chunk_line_too_long()
            return len(data)
        buffer += data[pos:eol + 1]
        if len(buffer) > self._line_limit():
            raise self._chunk_line_too_long()
        line = bytes(buffer)
        buffer.clear()
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            raise HttpError(400, "Bad chunked encoding: a line does not end in CRLF")
        line = line[:-2]
        state = self.state
        if state is CHUNK_SIZE_STATE:
            match = CHUNK_SIZE.fullmatch(line)
            if match is None:
                raise HttpError(400, f"Bad chunked encoding: invalid chunk size line "
                                     f"{line[:40]!r}")
            self.remaining = int(match.group(1), 16)
            self.state = CHUNK_DATA if self.remaining else TRAILERS
        elif state is CHUNK_DATA_END:
            if line:
                raise HttpError(400, "Bad chunked encoding: chunk data is longer than its "
                                     "size")
            self.state = CHUNK_SIZE_STATE
        elif line:  # a trailer field: checked, counted, then dropped
            self._check_trailer(line)
        else:
            self._message_complete()
        return eol + 1

    def _line_limit(self: _Parser) -> int:
        return self.field_limit if self.state is TRAILERS else MAX_CHUNK_LINE

    def _chunk_line_too_long(self: _Parser) -> HttpError:
        if self.state is TRAILERS:
            return field_too_large(self.field_limit)
        return HttpError(400, f"Bad chunked encoding: a chunk size line is longer than "
                              f"{MAX_CHUNK_LINE} bytes")

    def _check_trailer(self: _Parser, line: bytes) -> None:
        if FIELD.fullmatch(line + b"\r\n") is None:
            raise header_error(line + b"\r\n", where="trailer")
        self.trailer_lines += 1
        if self.trailer_lines > self.fields_limit:
            raise too_many_fields(self.fields_limit)
        name = line.split(b":", 1)[0].lower()
        if name in NOT_IN_TRAILERS:
            raise HttpError(400, f"The trailer field {name.decode()} is not allowed")
