"""What the helper agent and an app process say to each other: request and response
frames over one persistent Unix stream, the header fields a response head never carries
(HOP_BY_HOP), and how the app process's start-up feedback line is written.

This module is stdlib-only on purpose: the app-side loader runs with the app's own
interpreter (which does not have our packages) and loads this file from the source the
helper agent sends it. That is also why the feedback writers live here rather than in
`startup_protocol`, which uses them for every child.

Any byte in any value (NUL, CR, LF included) arrives exactly as sent and cannot reach
another field: bodies and heads travel with their lengths in front of them, and the
environ's items are either sized or, when no item holds a NUL, NUL-ended and counted.

Request, helper agent -> app::

    | u32 N | u32 C | N - 4 bytes of items |          the fields block: C items (C even),
                                                      KEY, VALUE, KEY, VALUE ..., latin-1
    items, when none holds a NUL:   C with its top bit set (NUL_ENDED), then
                                    ITEM \\0 ITEM \\0 ...         (each item, then a NUL)
    items, when one holds a NUL:    C, then C x u32 (each item's size), then the items
                                    back to back

    Either way no byte of an item is ever read as part of another: NULs end items only
    when no item holds one, and the reader checks that there are exactly C of them.
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

import json
import os
import struct

LENGTH = struct.Struct(">I")
CONTENT_LENGTH = struct.Struct(">q")
RESPONSE_PREFIX = struct.Struct(">qB")  # content length, flags
_RESPONSE_HEAD_FRAME = struct.Struct(">IqB")  # the frame's length, then RESPONSE_PREFIX
END = LENGTH.pack(0)
ABORT_MARK = 0xFFFFFFFF
ABORT = LENGTH.pack(ABORT_MARK)
MAX_FIELDS = 1 << 20
NUL_ENDED = 0x80000000  # in a fields block's count: the items are NUL-ended, not sized
_FIELDS_HEAD = struct.Struct(">II")  # the frame's length, the count
HAS_DATE = 1
HAS_SERVER = 2
# In the environ of a request to a generic app: tunnel the connection if the app switches
# protocols (never sent to WSGI apps, which cannot).
UPGRADE_KEY = "passenger.upgrade"
# Connection-specific header fields (RFC 9110 7.6.1, 11.7), lower case: they describe one
# hop, and the helper agent frames each hop itself, so no response head carries an app's
# (except Connection and Upgrade in a generic app's 101: the switch is the app's). A WSGI
# environ still shows the client's, as CGI variables do.
HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-connection", "transfer-encoding",
                        "te", "trailer", "upgrade", "proxy-authenticate",
                        "proxy-authorization"))


class ProtocolError(ValueError):
    """A frame that does not decode: truncated, garbled, or inconsistent lengths."""


_UINTS: dict[int, struct.Struct] = {}


def _uints(n: int) -> struct.Struct:
    """The struct of `n` big-endian u32 (a fields block's count and lengths)."""
    table = _UINTS.get(n)
    if table is None:
        table = struct.Struct(f">{n}I")
        if len(_UINTS) < 1024:
            _UINTS[n] = table
    return table


def encode_fields(items: list[bytes]) -> bytes:
    """One frame holding `items`. Usually (no item holds a NUL) the items are joined
    with NULs; otherwise each item's length is given up front instead."""
    count = len(items)
    data = b"\0".join(items) + b"\0" if count else b""
    if data.count(b"\0") == count:  # the NULs are exactly the terminators
        return _FIELDS_HEAD.pack(len(data) + 4, count | NUL_ENDED) + data
    table = _uints(count + 1)
    data = b"".join(items)
    return LENGTH.pack(table.size + len(data)) + table.pack(count, *map(len, items)) + data


def decode_fields(block: bytes) -> list[str]:
    """The items of a fields block (without its outer length), as latin-1 text.

    Raises ProtocolError for anything that is not exactly what `encode_fields` makes."""
    size = len(block)
    if size < 4:
        raise ProtocolError(f"fields block of {size} bytes is shorter than its count")
    count = LENGTH.unpack_from(block)[0]
    if count & NUL_ENDED:
        count ^= NUL_ENDED
        if not count:
            if size != 4:
                raise ProtocolError("fields block of no items holds data")
            return []
        items = block[4:].decode("latin-1").split("\0")  # one char per byte
        if items.pop() or len(items) != count:
            raise ProtocolError(f"fields block: not {count} NUL-ended items")
        return items
    data_start = 4 + 4 * count
    if count > MAX_FIELDS or data_start > size:
        raise ProtocolError(f"fields block of {size} bytes cannot hold {count} items")
    lengths = _uints(count).unpack_from(block, 4)
    if sum(lengths) != size - data_start:
        raise ProtocolError(f"fields block: items of {sum(lengths)} bytes in "
                            f"{size - data_start}")
    text = block[data_start:].decode("latin-1")
    if "\0" not in text:
        raise ProtocolError("fields block: sized items without a NUL (they are sent "
                            "NUL-ended)")
    items = []
    pos = 0
    for n in lengths:
        items.append(text[pos:pos + n])
        pos += n
    return items


def decode_environ(block: bytes) -> dict[str, str]:
    """KEY, VALUE ... items as a dict; the NUL-ended case inline (once per request)."""
    count = LENGTH.unpack_from(block)[0] if len(block) >= 4 else 0
    if count & NUL_ENDED and count % 2 == 0:
        items = block[4:].decode("latin-1").split("\0")
        if items.pop() == "" and len(items) == count ^ NUL_ENDED:
            it = iter(items)
            return dict(zip(it, it, strict=False))  # an even count, checked
    items = decode_fields(block)
    if len(items) % 2:
        raise ProtocolError(f"environ block holds an odd number of items ({len(items)})")
    it = iter(items)
    return dict(zip(it, it, strict=False))  # an even count, checked


def encode_chunk(data: bytes) -> bytes:
    return LENGTH.pack(len(data)) + data


def response_head_text(status: str, headers: list[tuple[str, str]]) -> bytes:
    """b"200 OK\\r\\nName: value\\r\\n..." (a sender caches it: heads repeat)."""
    lines = [status, "\r\n"]
    for name, value in headers:
        lines += (name, ": ", value, "\r\n")
    return "".join(lines).encode("latin-1")


def frame_response_head(content_length: int, flags: int, text: bytes) -> bytes:
    return _RESPONSE_HEAD_FRAME.pack(len(text) + RESPONSE_PREFIX.size, content_length,
                                     flags) + text


def encode_response_head(content_length: int, status: str,
                         headers: list[tuple[str, str]], flags: int = 0) -> bytes:
    return frame_response_head(content_length, flags, response_head_text(status, headers))


def decode_response_head(payload: bytes) -> tuple[int, int, bytes]:
    """-> (content length or -1, flags, b"200 OK\\r\\nName: value\\r\\n...")."""
    if len(payload) < RESPONSE_PREFIX.size:
        raise ProtocolError(f"response head of {len(payload)} bytes is too short")
    length, flags = RESPONSE_PREFIX.unpack_from(payload)
    return length, flags, payload[RESPONSE_PREFIX.size:]


# -- start-up feedback (the format: passenger.common.startup_protocol) -------------------


def encode_document(doc: dict[str, object]) -> bytes:
    """One JSON object on one line: a startup document, a note, or a feedback line."""
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def report_ready(feedback_fd: int, **facts: object) -> None:
    _report(feedback_fd, {"status": "ready", **facts})


def report_error(feedback_fd: int, message: str, **facts: object) -> None:
    """`message`: one line for the user."""
    _report(feedback_fd, {"status": "error", "message": message, **facts})


def _report(feedback_fd: int, message: dict[str, object]) -> None:
    """The whole line, then the pipe closes: a child reports once."""
    data = encode_document(message)
    while data:
        data = data[os.write(feedback_fd, data):]
    os.close(feedback_fd)
