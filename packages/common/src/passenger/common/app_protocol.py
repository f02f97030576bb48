"""Frames between the helper agent and an app process, over one persistent Unix stream.

This module is stdlib-only on purpose: the app-side loader runs with the app's own
interpreter (which does not have our packages) and loads this file by path.

Request, helper agent -> app::

    +-----------+------------------------------------------------+
    | u32 N     | N bytes: KEY \\0 VALUE \\0 KEY \\0 VALUE \\0 ...  |   CGI/WSGI variables,
    +-----------+------------------------------------------------+   latin-1
    then the body as chunks  | u32 M | M bytes |  ...  ended by  | u32 0 |

Response, app -> helper agent::

    | u32 N | i64 content-length (-1: unknown) | b"200 OK\\r\\n" | b"Name: value\\r\\n"... |
    then body chunks  | u32 M | M bytes |  ...  ended by  | u32 0 |
    or, if the app fails after the head was sent, | u32 ABORT |

All integers are big-endian. The head carries no hop-by-hop headers: the helper agent
frames the response for the client (Content-Length or chunked, keep-alive).
"""

from __future__ import annotations

import struct

LENGTH = struct.Struct(">I")
CONTENT_LENGTH = struct.Struct(">q")
END = LENGTH.pack(0)
ABORT_MARK = 0xFFFFFFFF
ABORT = LENGTH.pack(ABORT_MARK)


def encode_request_head(block: bytes) -> bytes:
    """`block` is already KEY\\0VALUE\\0...; the caller builds it without copies."""
    return LENGTH.pack(len(block)) + block


def decode_environ(block: bytes) -> dict[str, str]:
    parts = block.decode("latin-1").split("\0")
    it = iter(parts[:-1] if parts and parts[-1] == "" else parts)
    return dict(zip(it, it, strict=False))


def encode_chunk(data: bytes) -> bytes:
    return LENGTH.pack(len(data)) + data


def encode_response_head(content_length: int, status: str,
                         headers: list[tuple[str, str]]) -> bytes:
    lines = [status, "\r\n"]
    for name, value in headers:
        lines += (name, ": ", value, "\r\n")
    text = "".join(lines).encode("latin-1")
    return LENGTH.pack(len(text) + 8) + CONTENT_LENGTH.pack(content_length) + text


def decode_response_head(payload: bytes) -> tuple[int, bytes]:
    """-> (content length or -1, b"200 OK\\r\\nName: value\\r\\n...")."""
    return CONTENT_LENGTH.unpack_from(payload)[0], payload[8:]
