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
VALUE = rb"[^\x00-\x08\x0a-\x1f\x7f]"  # field-vchar, obs-text, SP, HTAB
REQUEST_LINE = re.compile(rb"(" + TOKEN + rb"++) ([^\x00-\x20\x7f]++) HTTP/(\d)\.(\d)\r\n")
# One header field line. Anchored at a line start: a section is valid exactly when every
# one of its LFs ends a match (a line with a bare CR or LF, an obs-fold or any stray byte
# does not match at all).
FIELD = re.compile(rb"(?m)^(" + TOKEN + rb"++):[ \t]*+(" + VALUE + rb"*+)\r\n")
HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]++\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*+)(?::[0-9]*+)?+")
ABSOLUTE_TARGET = re.compile(rb"(?i:https?)://([^/?#]*+)([^?#]*+)(?:\?([^#]*+))?+(?:#.*+)?+")
CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*+;[^\x00-\x08\x0a-\x1f\x7f]*+)?+")
DIGITS = re.compile(rb"[0-9]{1,18}")

WHITESPACE = (b" ", b"\t")  # after a value, to trim (the regex keeps it)
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

    __slots__ = ("chunked", "content_length", "expect_continue", "has_body", "headers",
                 "host", "keep_alive", "method", "path", "query", "target", "upgrade",
                 "version")

    def __init__(self, method: bytes, target: bytes, path: bytes, query: bytes,
                 version: bytes, headers: dict[bytes, bytes], host: bytes) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.version = version          # b"1.0" or b"1.1"
        self.headers = headers
        self.host = host
        self.keep_alive = True
        self.content_length = 0
        self.chunked = False
        self.has_body = False
        self.expect_continue = False
        self.upgrade = b""              # the Upgrade value, when Connection asks for it


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


# The states as plain names: they are compared on every piece of every request.
HEAD_STATE, BODY, CHUNK_SIZE_STATE, CHUNK_DATA = (
    State.HEAD, State.BODY, State.CHUNK_SIZE, State.CHUNK_DATA)
CHUNK_DATA_END, TRAILERS, HELD, DONE = (
    State.CHUNK_DATA_END, State.TRAILERS, State.HELD, State.DONE)


def _cgi_key(name: bytes) -> bytes:
    upper = name.upper()
    if b"_" in upper:
        return b""  # as Passenger and gunicorn: X_Foo could pose as X-Foo
    key = upper.replace(b"-", b"_")
    if key in (b"CONTENT_TYPE", b"CONTENT_LENGTH"):
        return key
    key = b"HTTP_" + key
    return b"" if key in DROPPED_HEADERS else key


_KEYS: dict[bytes, bytes] = {}
MAX_CACHED_KEYS = 2048


def cgi_key(name: bytes) -> bytes:
    """The environ key of a header name (b"": dropped), cached for the common names."""
    try:
        return _KEYS[name]
    except KeyError:
        key = _cgi_key(name)
        if len(_KEYS) < MAX_CACHED_KEYS:
            _KEYS[name] = key
        return key


class RequestParser:
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
                raise _line_too_long(self.line_limit)
            return
        if self.head_lines > self.fields_limit:
            raise _too_many_fields(self.fields_limit)
        if size + 2 > self.field_limit:  # gunicorn counts a field's CRLF
            raise _field_too_large(self.field_limit)

    def _parse_head(self, data: bytes, start: int, end: int) -> None:
        """data[start:end] is a request line and its header lines; data[end:end+4] is
        the CRLFCRLF that ends them."""
        line = REQUEST_LINE.match(data, start, end + 2)
        if line is None:
            raise self._line_error(data, start, end)
        method, target, major, minor = line.groups()
        eol = line.end()  # where the header lines start
        if eol - 2 - start > self.line_limit:
            raise _line_too_long(self.line_limit)
        if major != b"1":
            raise HttpError(505, f"HTTP version {major.decode()}.{minor.decode()} is not "
                                 f"supported; use HTTP/1.1")
        version = b"1.0" if minor == b"0" else b"1.1"
        if eol < end:
            section = data[eol:end + 2]
            fields = FIELD.findall(section)
            count = len(fields)
            if count != section.count(b"\n"):  # a line that is not a field, a bare CR/LF
                raise _header_error(section)
            if count > self.fields_limit:
                raise _too_many_fields(self.fields_limit)
            if len(section) > self.field_limit:
                self._check_field_sizes(section)
            headers = {}
            try:
                for name, value in fields:
                    if value[-1:] in WHITESPACE:
                        value = value.rstrip(b" \t")
                    headers[_KEYS[name]] = value
                if len(headers) != count or b"" in headers:
                    raise KeyError  # a repeated, dropped or new name: the long way
            except KeyError:
                headers = _headers(fields)
        else:
            headers = {}
        if target[0] == 47 and method != b"CONNECT":  # b"/": origin-form
            path, _, query = target.partition(b"?")
            if b"#" in target:  # not part of a request-target; browsers never send one
                path = path.partition(b"#")[0]
                query = query.partition(b"#")[0]
            host = headers.get(b"HTTP_HOST")
        else:
            path, query, host = _other_target(method, target, version, headers)
        if host is None:
            if version == b"1.1":
                raise HttpError(400, "An HTTP/1.1 request must have a Host header")
            host = b""
        elif host not in _GOOD_HOSTS:
            _check_host(host)
        head = RequestHead(method, target, path, query, version, headers, host)
        count = len(headers)
        if count > 1 or (count and b"HTTP_HOST" not in headers):
            _interpret(head, headers)
        elif version == b"1.0":
            head.keep_alive = False
        self.keep_alive = keep_alive = head.keep_alive
        if not head.has_body:
            self.sink.on_head(head)
            if self.state is HEAD_STATE and not keep_alive:
                self.state = DONE
            self.sink.on_message_complete()
            return
        if head.chunked:
            self.state = CHUNK_SIZE_STATE
            self.trailer_lines = 0
        else:
            self.state = BODY
            self.remaining = head.content_length
        self.sink.on_head(head)

    def _line_error(self, data: bytes, start: int, end: int) -> HttpError:
        """Why the request line is refused (only on the error path)."""
        eol = data.find(b"\r\n", start, end + 2)
        if eol - start > self.line_limit:
            return _line_too_long(self.line_limit)
        return _request_line_error(data[start:eol])

    def _check_field_sizes(self, section: bytes) -> None:
        size = self.field_limit - 2  # gunicorn counts a field's CRLF
        for raw in section.split(b"\r\n"):
            if len(raw) > size:
                raise _field_too_large(self.field_limit)

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

    def _line_limit(self) -> int:
        return self.field_limit if self.state is TRAILERS else MAX_CHUNK_LINE

    def _chunk_line_too_long(self) -> HttpError:
        if self.state is TRAILERS:
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
        state = self.state
        if state is not HELD and state is not DONE:
            self.state = HEAD_STATE if self.keep_alive else DONE
        self.sink.on_message_complete()


# -- interpreting a head ---------------------------------------------------------------

_GOOD_HOSTS: set[bytes] = set()  # Host values seen valid (clients repeat theirs)
MAX_GOOD_HOSTS = 1024


def _check_host(host: bytes) -> None:
    if HOST.fullmatch(host) is None:
        raise HttpError(400, f"The Host header is invalid: {host[:80]!r}")
    if len(_GOOD_HOSTS) < MAX_GOOD_HOSTS:
        _GOOD_HOSTS.add(host)


def _headers(fields: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """Header fields to environ keys, the long way: names seen for the first time,
    dropped names, repeated fields (joined in order, RFC 9110 5.3, unless a field may
    appear only once)."""
    headers: dict[bytes, bytes] = {}
    for name, value in fields:
        key = cgi_key(name)
        if not key:
            continue
        if value[-1:] in WHITESPACE:
            value = value.rstrip(b" \t")
        if key not in headers:
            headers[key] = value
        elif key in SINGLETONS:
            raise HttpError(400, f"The request has more than one "
                                 f"{name.decode('latin-1')} header")
        else:
            headers[key] += (b"; " if key == b"HTTP_COOKIE" else b", ") + value
    return headers


def _other_target(method: bytes, target: bytes, version: bytes,
                  headers: dict[bytes, bytes]) -> tuple[bytes, bytes, bytes | None]:
    """-> (path, query, host) of a target that is not an origin-form path."""
    if method == b"CONNECT":
        raise HttpError(405, "CONNECT is for proxies, and this server is not one")
    if target == b"*":
        if method != b"OPTIONS":
            raise HttpError(400, "The asterisk-form target '*' is only for OPTIONS")
        return b"*", b"", headers.get(b"HTTP_HOST")
    absolute = ABSOLUTE_TARGET.fullmatch(target)
    if absolute is None:
        raise HttpError(400, "The request target is not an absolute path or an http(s) "
                             "URI")
    authority, path, query = absolute.group(1), absolute.group(2), absolute.group(3)
    if b"@" in authority:
        raise HttpError(400, "The request target carries user information")
    if not authority or HOST.fullmatch(authority) is None:
        raise HttpError(400, "The request target's host is invalid")
    if b"HTTP_HOST" not in headers and version == b"1.1":
        raise HttpError(400, "An HTTP/1.1 request must have a Host header")
    headers[b"HTTP_HOST"] = authority  # RFC 9112 3.2.2: the target's wins over Host
    return path or b"/", query or b"", authority


def _interpret(head: RequestHead, headers: dict[bytes, bytes]) -> None:
    """Connection, framing, Expect and Upgrade (a head with no field but Host has
    none of them)."""
    connection = headers.get(b"HTTP_CONNECTION")
    tokens = (COMMON_TOKENS.get(connection) or _tokens(connection)) if connection else ()
    head.keep_alive = "close" not in tokens and (
        head.version == b"1.1" or "keep-alive" in tokens)
    length = headers.get(b"CONTENT_LENGTH")
    coding = headers.get(b"HTTP_TRANSFER_ENCODING")
    if coding is not None:
        _check_coding(head, coding, length)
    elif length is not None:
        if DIGITS.fullmatch(length) is None:
            raise HttpError(400, f"Invalid Content-Length {length[:40]!r}")
        head.content_length = int(length)
        head.has_body = head.content_length > 0
    expect = headers.get(b"HTTP_EXPECT")
    if expect is not None:
        if expect.lower() != b"100-continue":
            raise HttpError(417, f"Unsupported expectation: {expect[:80]!r}")
        head.expect_continue = head.version == b"1.1"
    if "upgrade" in tokens and b"HTTP_UPGRADE" in headers:
        head.upgrade = headers[b"HTTP_UPGRADE"]


def _check_coding(head: RequestHead, coding: bytes, length: bytes | None) -> None:
    if length is not None:
        raise HttpError(400, "The request has both Content-Length and Transfer-Encoding")
    if head.version == b"1.0":
        raise HttpError(400, "Transfer-Encoding is not allowed in an HTTP/1.0 request")
    codings = [c.strip(" \t") for c in coding.decode("latin-1").lower().split(",")]
    if codings == ["chunked"]:
        head.chunked = head.has_body = True
        return
    if "" in codings or codings[-1] != "chunked" or codings.count("chunked") > 1:
        # RFC 9112 6.3: the body's length cannot be known
        raise HttpError(400, f"Invalid Transfer-Encoding {coding[:80]!r}: chunked must be "
                             f"the last coding, once")
    raise HttpError(501, f"Transfer-Encoding {coding[:80]!r} is not supported; only "
                         f"chunked is")


COMMON_TOKENS = {b"keep-alive": ("keep-alive",), b"Keep-Alive": ("keep-alive",),
                 b"close": ("close",), b"Close": ("close",), b"Upgrade": ("upgrade",),
                 b"upgrade": ("upgrade",)}


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

