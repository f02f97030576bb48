"""A strict, incremental HTTP/1.x request parser (RFC 9110, RFC 9112).

It accepts what RFC 9112 allows (any token method, any header name that is a token,
chunk extensions, trailers, asterisk-form with OPTIONS, absolute-form) and answers what
it forbids with an `HttpError` carrying the status to send; after an error, or after a
request that ends the connection, it reads nothing more. Nothing it lets through can
be read two ways: one Content-Length or `chunked`, never both; one Host; no bare CR or
LF, no obs-fold, no control bytes in values.

Heads are checked with a few regular expressions over the whole head (one pass each in
C) instead of byte-by-byte callbacks; the limits (gunicorn's, with its option names)
are enforced while a head is still arriving, so a client cannot make us hold more than
they allow.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Protocol

TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
REQUEST_LINE = re.compile(rb"(" + TOKEN + rb"++) ([^\x00-\x20\x7f]++) HTTP/(\d)\.(\d)")
HEADER_SECTION = re.compile(rb"(?:" + TOKEN + rb"++:[^\x00-\x08\x0a-\x1f\x7f]*+\r\n)*+")
FIELD = re.compile(rb"(" + TOKEN + rb"++):[ \t]*+([^\x00-\x08\x0a-\x1f\x7f]*+)\r\n")
HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]++\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*+)(?::[0-9]*+)?+")
ABSOLUTE_TARGET = re.compile(rb"(?i:https?)://([^/?#]*+)([^?#]*+)(?:\?([^#]*+))?+(?:#.*+)?+")
CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*+;[^\x00-\x08\x0a-\x1f\x7f]*+)?+")
DIGITS = re.compile(rb"[0-9]{1,18}")
WHITESPACE = (b" ", b"\t")

MAX_CHUNK_LINE = 4096  # a chunk-size line with its extensions
SINGLETONS = frozenset((b"HTTP_HOST", b"CONTENT_LENGTH", b"CONTENT_TYPE"))
NOT_IN_TRAILERS = frozenset((b"content-length", b"transfer-encoding", b"host"))
# httpoxy: a client's "Proxy:" header must not become the app's HTTP_PROXY.
DROPPED_HEADERS = frozenset((b"HTTP_PROXY",))


class HttpError(Exception):
    """The request cannot be served: answer `status` with `reason`, then close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """gunicorn's names and meanings; 0 means the largest value allowed."""

    request_line: int = 8190
    fields: int = 100
    field_size: int = 8190


class RequestHead:
    """One parsed request head; header keys are CGI names (HTTP_X_FOO, CONTENT_TYPE)."""

    __slots__ = ("chunked", "content_length", "expect_continue", "headers", "host",
                 "keep_alive", "method", "path", "query", "target", "upgrade", "version")

    def __init__(self, method: bytes, target: bytes, path: bytes, query: bytes,
                 version: bytes, headers: dict[bytes, bytes]) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.version = version          # b"1.0" or b"1.1"
        self.headers = headers
        self.host = b""
        self.keep_alive = True
        self.content_length = 0
        self.chunked = False
        self.expect_continue = False
        self.upgrade = b""              # the Upgrade value, when Connection asks for it

    @property
    def has_body(self) -> bool:
        return self.chunked or self.content_length > 0


class RequestSink(Protocol):
    def on_head(self, head: RequestHead) -> None: ...
    def on_body(self, data: bytes) -> None: ...
    def on_message_complete(self) -> None: ...


class State(enum.Enum):
    HEAD = "head"
    BODY = "body"                    # Content-Length bytes to go
    CHUNK_SIZE = "chunk size"
    CHUNK_DATA = "chunk data"
    CHUNK_DATA_END = "chunk data end"  # the CRLF after a chunk's data
    TRAILERS = "trailers"
    HELD = "held"                    # after an upgrade request: bytes are kept, not parsed
    DONE = "done"                    # the connection ends: nothing more is read


def _cgi_key(name: bytes) -> bytes | None:
    upper = name.upper()
    if b"_" in upper:
        return None  # as Passenger and gunicorn: X_Foo could pose as X-Foo
    key = upper.replace(b"-", b"_")
    if key in (b"CONTENT_TYPE", b"CONTENT_LENGTH"):
        return key
    key = b"HTTP_" + key
    return None if key in DROPPED_HEADERS else key


_KEYS: dict[bytes, bytes | None] = {}
MAX_CACHED_KEYS = 2048


def cgi_key(name: bytes) -> bytes | None:
    """The environ key of a header name (None: dropped), cached for the common names."""
    try:
        return _KEYS[name]
    except KeyError:
        key = _cgi_key(name)
        if len(_KEYS) < MAX_CACHED_KEYS:
            _KEYS[name] = key
        return key


class RequestParser:
    def __init__(self, sink: RequestSink, limits: Limits = Limits()) -> None:
        self.sink = sink
        self.line_limit = limits.request_line or 65536
        self.field_limit = limits.field_size or 65536
        self.fields_limit = limits.fields or 32768
        self.state = State.HEAD
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
            self._feed(data)
        except HttpError:
            self.state = State.DONE
            raise

    def feed_eof(self) -> None:
        """The client will send nothing more."""
        state = self.state
        if state is State.HEAD:
            if self.buffer.strip(b"\r\n"):
                self.state = State.DONE
                raise HttpError(400, "The request ended before its head was complete")
        elif state not in (State.HELD, State.DONE):
            self.state = State.DONE
            raise HttpError(400, "The request ended before its body was complete")
        self.state = State.DONE

    def hold(self) -> None:
        """Stop parsing: what comes next is kept for a tunnel (see `take_held`)."""
        self.state = State.HELD

    def take_held(self) -> bytes:
        held = bytes(self.held)
        self.held.clear()
        return held

    def stop(self) -> None:
        self.state = State.DONE

    @property
    def in_message(self) -> bool:
        """Whether part of a request has arrived and the rest has not."""
        if self.state is State.HEAD:
            return bool(self.buffer.strip(b"\r\n"))
        return self.state not in (State.DONE, State.HELD)

    # -- the state machine ----------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        pos = 0
        end = len(data)
        while pos < end:
            state = self.state
            if state is State.HEAD:
                pos = self._feed_head(data, pos)
            elif state is State.BODY or state is State.CHUNK_DATA:
                take = min(self.remaining, end - pos)
                self.sink.on_body(data if take == end and pos == 0 else data[pos:pos + take])
                pos += take
                self.remaining -= take
                if not self.remaining:
                    if state is State.BODY:
                        self._message_complete()
                    else:
                        self.state = State.CHUNK_DATA_END
            elif state is State.CHUNK_SIZE or state is State.CHUNK_DATA_END \
                    or state is State.TRAILERS:
                pos = self._feed_line(data, pos)
            elif state is State.HELD:
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
        if buffer.startswith(b"\r\n"):
            stripped = buffer.lstrip(b"\r\n")
            cut = len(buffer) - len(stripped)
            cut -= cut % 2
            del buffer[:cut]
            before = max(0, before - cut)
            self.scan_pos = self.head_lines = 0
        end = buffer.find(b"\r\n\r\n", max(0, before - 3))
        if end < 0:
            self._check_partial_head()
            return len(data)
        head = bytes(buffer[:end + 4])
        consumed = end + 4 - before  # of data[pos:]
        buffer.clear()
        self.scan_pos = self.head_lines = 0
        self._parse_head(head, 0, end)
        return pos + consumed

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
                raise _line_too_long(self.line_limit)
            return
        if self.head_lines > self.fields_limit:
            raise _too_many_fields(self.fields_limit)
        if size + 2 > self.field_limit:  # gunicorn counts a field's CRLF
            raise _field_too_large(self.field_limit)

    def _parse_head(self, data: bytes, start: int, end: int) -> None:
        """data[start:end] is a request line and its header lines; data[end:end+4] is
        the CRLFCRLF that ends them."""
        eol = data.find(b"\r\n", start, end + 2)
        if eol - start > self.line_limit:
            raise _line_too_long(self.line_limit)
        line = REQUEST_LINE.fullmatch(data, start, eol)
        if line is None:
            raise _request_line_error(data[start:eol])
        method, target, major, minor = line.groups()
        if major != b"1":
            raise HttpError(505, f"HTTP version {major.decode()}.{minor.decode()} is not "
                                 f"supported; use HTTP/1.1")
        version = b"1.0" if minor == b"0" else b"1.1"
        headers: dict[bytes, bytes] = {}
        if eol < end:
            if HEADER_SECTION.fullmatch(data, eol + 2, end + 2) is None:
                raise _header_error(data[eol + 2:end + 2])
            fields = FIELD.findall(data, eol + 2, end + 2)
            if len(fields) > self.fields_limit:
                raise _too_many_fields(self.fields_limit)
            if end - eol > self.field_limit:
                size = self.field_limit - 2  # gunicorn counts a field's CRLF
                for raw in data[eol + 2:end].split(b"\r\n"):
                    if len(raw) > size:
                        raise _field_too_large(self.field_limit)
            for name, value in fields:
                key = cgi_key(name)
                if key is None:
                    continue
                if value[-1:] in WHITESPACE:
                    value = value.rstrip(b" \t")
                if key in headers:
                    if key in SINGLETONS:
                        raise HttpError(400, f"The request has more than one "
                                             f"{name.decode('latin-1')} header")
                    headers[key] += (b"; " if key == b"HTTP_COOKIE" else b", ") + value
                else:
                    headers[key] = value
        head = _request_head(method, target, version, headers)
        self.keep_alive = head.keep_alive
        if head.chunked:
            self.state = State.CHUNK_SIZE
            self.trailer_lines = 0
        elif head.content_length:
            self.state = State.BODY
            self.remaining = head.content_length
        self.sink.on_head(head)
        if not head.has_body:
            self._message_complete()

    def _feed_line(self, data: bytes, pos: int) -> int:
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
        if state is State.CHUNK_SIZE:
            match = CHUNK_SIZE.fullmatch(line)
            if match is None:
                raise HttpError(400, f"Bad chunked encoding: invalid chunk size line "
                                     f"{line[:40]!r}")
            self.remaining = int(match.group(1), 16)
            self.state = State.CHUNK_DATA if self.remaining else State.TRAILERS
        elif state is State.CHUNK_DATA_END:
            if line:
                raise HttpError(400, "Bad chunked encoding: chunk data is longer than its "
                                     "size")
            self.state = State.CHUNK_SIZE
        elif line:  # a trailer field: checked, counted, then dropped
            self._check_trailer(line)
        else:
            self._message_complete()
        return eol + 1

    def _line_limit(self) -> int:
        return self.field_limit if self.state is State.TRAILERS else MAX_CHUNK_LINE

    def _chunk_line_too_long(self) -> HttpError:
        if self.state is State.TRAILERS:
            return _field_too_large(self.field_limit)
        return HttpError(400, f"Bad chunked encoding: a chunk size line is longer than "
                              f"{MAX_CHUNK_LINE} bytes")

    def _check_trailer(self, line: bytes) -> None:
        if FIELD.fullmatch(line + b"\r\n") is None:
            raise _header_error(line + b"\r\n", where="trailer")
        self.trailer_lines += 1
        if self.trailer_lines > self.fields_limit:
            raise _too_many_fields(self.fields_limit)
        name = line.split(b":", 1)[0].lower()
        if name in NOT_IN_TRAILERS:
            raise HttpError(400, f"The trailer field {name.decode()} is not allowed")

    def _message_complete(self) -> None:
        if self.state is not State.HELD and self.state is not State.DONE:
            self.state = State.HEAD if self.keep_alive else State.DONE
        self.sink.on_message_complete()


# -- interpreting a head ---------------------------------------------------------------

def _request_head(method: bytes, target: bytes, version: bytes,
                  headers: dict[bytes, bytes]) -> RequestHead:
    if method == b"CONNECT":
        raise HttpError(405, "CONNECT is for proxies, and this server is not one")
    if target[:1] == b"/":
        path, _, query = target.partition(b"?")
        if b"#" in target:  # not part of a request-target; browsers never send one
            path = path.partition(b"#")[0]
            query = query.partition(b"#")[0]
        host = headers.get(b"HTTP_HOST")
    elif target == b"*":
        if method != b"OPTIONS":
            raise HttpError(400, "The asterisk-form target '*' is only for OPTIONS")
        path, query, host = b"*", b"", headers.get(b"HTTP_HOST")
    else:
        absolute = ABSOLUTE_TARGET.fullmatch(target)
        if absolute is None:
            raise HttpError(400, "The request target is not an absolute path or an "
                                 "http(s) URI")
        authority, path, query = absolute.group(1), absolute.group(2), absolute.group(3)
        if b"@" in authority:
            raise HttpError(400, "The request target carries user information")
        if HOST.fullmatch(authority) is None or not authority:
            raise HttpError(400, "The request target's host is invalid")
        path = path or b"/"
        query = query or b""
        if b"HTTP_HOST" not in headers and version == b"1.1":
            raise HttpError(400, "An HTTP/1.1 request must have a Host header")
        host = headers[b"HTTP_HOST"] = authority  # RFC 9112 3.2.2: the target's wins
    head = RequestHead(method, target, path, query, version, headers)
    if host is None:
        if version == b"1.1":
            raise HttpError(400, "An HTTP/1.1 request must have a Host header")
        host = b""
    elif HOST.fullmatch(host) is None:
        raise HttpError(400, f"The Host header is invalid: {host[:80]!r}")
    head.host = host
    connection = headers.get(b"HTTP_CONNECTION")
    tokens = _tokens(connection) if connection else ()
    if version == b"1.1":
        head.keep_alive = "close" not in tokens
    else:
        head.keep_alive = "keep-alive" in tokens
    _framing(head, headers)
    expect = headers.get(b"HTTP_EXPECT")
    if expect is not None:
        if expect.lower() != b"100-continue":
            raise HttpError(417, f"Unsupported expectation: {expect[:80]!r}")
        head.expect_continue = version == b"1.1"
    if "upgrade" in tokens and b"HTTP_UPGRADE" in headers:
        head.upgrade = headers[b"HTTP_UPGRADE"]
    return head


def _framing(head: RequestHead, headers: dict[bytes, bytes]) -> None:
    length = headers.get(b"CONTENT_LENGTH")
    coding = headers.get(b"HTTP_TRANSFER_ENCODING")
    if coding is not None:
        if length is not None:
            raise HttpError(400, "The request has both Content-Length and "
                                 "Transfer-Encoding")
        if head.version == b"1.0":
            raise HttpError(400, "Transfer-Encoding is not allowed in an HTTP/1.0 request")
        codings = [c.strip(" \t") for c in coding.decode("latin-1").lower().split(",")]
        if codings == ["chunked"]:
            head.chunked = True
            return
        if "" in codings or codings[-1] != "chunked" or codings.count("chunked") > 1:
            # RFC 9112 6.3: the body's length cannot be known
            raise HttpError(400, f"Invalid Transfer-Encoding {coding[:80]!r}: chunked must "
                                 f"be the last coding, once")
        raise HttpError(501, f"Transfer-Encoding {coding[:80]!r} is not supported; only "
                             f"chunked is")
    if length is not None:
        if DIGITS.fullmatch(length) is None:
            raise HttpError(400, f"Invalid Content-Length {length[:40]!r}")
        head.content_length = int(length)


def _tokens(value: bytes) -> tuple[str, ...]:
    return tuple(t.strip(" \t") for t in value.decode("latin-1").lower().split(","))


# -- explaining a rejection (only on the error path, so it may be slow) ------------------

def _request_line_error(line: bytes) -> HttpError:
    parts = line.split(b" ")
    shown = line[:80]
    if len(parts) != 3 or not all(parts):
        return HttpError(400, f"Malformed request line {shown!r}")
    method, target, version = parts
    if re.fullmatch(TOKEN + rb"+", method) is None:
        return HttpError(400, f"Invalid request method {method[:40]!r}")
    if re.fullmatch(rb"HTTP/\d\.\d", version) is None:
        return HttpError(400, f"Invalid HTTP version {version[:40]!r}")
    return HttpError(400, f"Invalid character in the request target {target[:80]!r}")


def _header_error(section: bytes, where: str = "header") -> HttpError:
    for raw in section.split(b"\r\n")[:-1]:
        if FIELD.fullmatch(raw + b"\r\n"):
            continue
        shown = raw[:60]
        if raw[:1] in (b" ", b"\t"):
            return HttpError(400, f"Obsolete line folding in a {where} ({shown!r}) is not "
                                  f"accepted")
        name, colon, _ = raw.partition(b":")
        if not colon:
            return HttpError(400, f"A {where} line without a colon: {shown!r}")
        if re.fullmatch(TOKEN + rb"+", name) is None:
            return HttpError(400, f"Invalid {where} name {name[:60]!r}")
        return HttpError(400, f"Invalid character in the value of the {where} "
                              f"{name.decode('latin-1')!r}")
    return HttpError(400, f"Invalid {where} section (a bare CR or LF)")


def _line_too_long(limit: int) -> HttpError:
    return HttpError(414, f"The request line is longer than {limit} bytes "
                          f"(--limit-request-line)")


def _too_many_fields(limit: int) -> HttpError:
    return HttpError(431, f"The request has more than {limit} header fields "
                          f"(--limit-request-fields)")


def _field_too_large(limit: int) -> HttpError:
    return HttpError(431, f"A header field is longer than {limit} bytes with its CRLF "
                          f"(--limit-request-field-size)")

