"""The states of the request parser (`http_parser`) as it reads a connection's bytes,
shared with the chunked-body decoder (`chunked_body`) that drives the chunked ones."""

from __future__ import annotations

import enum


class State(enum.Enum):
    HEAD = "head"
    BODY = "body"                    # Content-Length bytes to go
    CHUNK_SIZE = "chunk size"
    CHUNK_DATA = "chunk data"
    CHUNK_DATA_END = "chunk data end"  # the CRLF after a chunk's data
    TRAILERS = "trailers"
    HELD = "held"                    # after an upgrade request: bytes are kept, not parsed
    DONE = "done"                    # the connection ends: nothing more is read


# The states as plain names: they are compared on every piece of every request.
HEAD_STATE, BODY, CHUNK_SIZE_STATE, CHUNK_DATA = (
    State.HEAD, State.BODY, State.CHUNK_SIZE, State.CHUNK_DATA)
CHUNK_DATA_END, TRAILERS, HELD, DONE = (
    State.CHUNK_DATA_END, State.TRAILERS, State.HELD, State.DONE)
