"""Frames between the helper agent and an app process, over one persistent Unix stream.

This module is stdlib-only on purpose: the app-side loader runs with the app's own
interpreter (which does not have our packages) and loads this file by path.

Every value travels with its length in front of it; no byte is ever a separator, so any
byte in any value (NUL, CR, LF included) arrives exactly as sent and cannot reach another
field.

Request, helper agent -> app::

    +--------+---------+---------------------------+-------------------------------+
    | u32 N  | u32 C   | C x u32: each item's size | the C items, back to back     |
    +--------+---------+---------------------------+-------------------------------+
             \\______________ N bytes: the fields block _____________________________/

    The C items (C even) are KEY, VALUE, KEY, VALUE ...: the CGI/WSGI variables, latin-1.
    Then the body as chunks  | u32 M | M bytes |  ...  ended by  | u32 0 |

Response, app -> helper agent::

    | u32 N | i64 content-length (-1: unknown) | u8 flags | b"200 OK\\r\\n" | b"A: b\\r\\n"... |
    then body chunks  | u32 M | M bytes |  ...  ended by  | u32 0 |
    or, if the app fails after the head was sent, | u32 ABORT |

    flags: HAS_DATE, HAS_SERVER (the app sent its own; the helper agent adds the missing
    ones). The head's lines were validated by the sender; the helper agent checks their
    shape again before a byte reaches the client.

All integers are big-endian. The head carries no hop-by-hop headers: the helper agent
frames the response for the client (Content-Length or chunked, keep-alive).
"""

from __future__ import annotations

import struct

LENGTH = struct.Struct(">I")
CONTENT_LENGTH = struct.Struct(">q")
RESPONSE_PREFIX = struct.Struct(">qB")  # content length, flags
END = LENGTH.pack(0)
ABORT_MARK = 0xFFFFFFFF
ABORT = LENGTH.pack(ABORT_MARK)
MAX_FIELDS = 1 << 20
HAS_DATE = 1
HAS_SERVER = 2
# In the environ of a request to a generic app: tunnel the connection if the app switches
# protocols (never sent to WSGI apps, which cannot).
UPGRADE_KEY = "passenger.upgrade"


class ProtocolError(ValueError):
    """A frame that does not decode: truncated, garbled, or inconsistent lengths."""


def encode_fields(items: list[bytes]) -> bytes:
    """One length-prefixed frame holding `items`, each with its own length."""
    count = len(items)
    block = (LENGTH.pack(count) + struct.pack(f">{count}I", *map(len, items))
             + b"".join(items))
    return LENGTH.pack(len(block)) + block


def decode_fields(block: bytes) -> list[str]:
    """The items of a fields block (without its outer length), as latin-1 text.

    Raises ProtocolError for anything that is not exactly what `encode_fields` makes."""
    size = len(block)
    if size < 4:
        raise ProtocolError(f"fields block of {size} bytes is shorter than its count")
    count = LENGTH.unpack_from(block)[0]
    data_start = 4 + 4 * count
    if count > MAX_FIELDS or data_start > size:
        raise ProtocolError(f"fields block of {size} bytes cannot hold {count} items")
    lengths = struct.unpack_from(f">{count}I", block, 4)
    if sum(lengths) != size - data_start:
        raise ProtocolError(f"fields block: items of {sum(lengths)} bytes in "
                            f"{size - data_start}")
    text = block[data_start:].decode("latin-1")  # one char per byte: offsets carry over
    items = []
    pos = 0
    for n in lengths:
        items.append(text[pos:pos + n])
        pos += n
    return items


def decode_environ(block: bytes) -> dict[str, str]:
    items = decode_fields(block)
    if len(items) % 2:
        raise ProtocolError(f"environ block holds an odd number of items ({len(items)})")
    it = iter(items)
    return dict(zip(it, it, strict=True))


def encode_chunk(data: bytes) -> bytes:
    return LENGTH.pack(len(data)) + data


def encode_response_head(content_length: int, status: str,
                         headers: list[tuple[str, str]], flags: int = 0) -> bytes:
    lines = [status, "\r\n"]
    for name, value in headers:
        lines += (name, ": ", value, "\r\n")
    text = "".join(lines).encode("latin-1")
    return (LENGTH.pack(len(text) + RESPONSE_PREFIX.size)
            + RESPONSE_PREFIX.pack(content_length, flags) + text)


def decode_response_head(payload: bytes) -> tuple[int, int, bytes]:
    """-> (content length or -1, flags, b"200 OK\\r\\nName: value\\r\\n...")."""
    if len(payload) < RESPONSE_PREFIX.size:
        raise ProtocolError(f"response head of {len(payload)} bytes is too short")
    length, flags = RESPONSE_PREFIX.unpack_from(payload)
    return length, flags, payload[RESPONSE_PREFIX.size:]
