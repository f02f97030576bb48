"""A whole request head read into a `RequestHead`: the request line, the header fields
as CGI environ keys, the target's form, the Host, and what the fields say about the
connection and the body (keep-alive, Content-Length or chunked, Expect, Upgrade); then
the parser goes on to the body or the next request. `HeadReader` is a part of
`RequestParser` (its base class): reading a head costs no call of its own.

Nothing it lets through can be read two ways: one Content-Length or `chunked`, never
both; one Host; no bare CR or LF, no obs-fold, no control bytes in values. Heads are
checked with a few regular expressions over the whole head (one pass each in C); field
names and Host values seen before are looked up, not checked again.
"""

from __future__ import annotations

from typing import Protocol

from passenger.helper_agent.http_errors import (
    HttpError,
    field_too_large,
    header_error,
    line_too_long,
    request_line_error,
    too_many_fields,
)
from passenger.helper_agent.http_grammar import ABSOLUTE_TARGET, DIGITS, FIELD, HOST, REQUEST_LINE
from passenger.helper_agent.parser_states import BODY, CHUNK_SIZE_STATE, DONE, HEAD_STATE, State

WHITESPACE = (b" ", b"\t")  # after a value, to trim (the regex keeps it)
SINGLETONS = frozenset((b"HTTP_HOST", b"CONTENT_LENGTH", b"CONTENT_TYPE"))
# httpoxy: a client's "Proxy:" header must not become the app's HTTP_PROXY.
DROPPED_HEADERS = frozenset((b"HTTP_PROXY",))


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


class _Parser(Protocol):
    """What of the parser (which this is a part of) reading a head uses."""

    sink: RequestSink
    state: State
    keep_alive: bool
    remaining: int
    trailer_lines: int
    line_limit: int
    fields_limit: int
    field_limit: int


class RequestSink(Protocol):
    def on_head(self, head: RequestHead) -> None: ...
    def on_body(self, data: bytes) -> None: ...
    def on_message_complete(self) -> None: ...


class HeadReader:
    __slots__ = ()

    def _parse_head(self: _Parser, data: bytes, start: int, end: int) -> None:
        """data[start:end] is a request line and its header lines; data[end:end+4] is
        the CRLFCRLF that ends them: read them, hand the head to the sink, and go on
        to the body or the next request."""
        line = REQUEST_LINE.match(data, start, end + 2)
        if line is None:
            raise _request_line_refused(data, start, end, self.line_limit)
        method, target, major, minor = line.groups()
        eol = line.end()  # where the header lines start
        if eol - 2 - start > self.line_limit or major != b"1":
            raise _version_refused(major, minor, eol - 2 - start, self.line_limit)
        version = b"1.0" if minor == b"0" else b"1.1"
        if eol < end:
            section = data[eol:end + 2]
            fields = FIELD.findall(section)
            count = len(fields)
            if count != section.count(b"\n") or count > self.fields_limit \
                    or len(section) > self.field_limit:  # else nothing can be wrong
                _check_section(section, count, self.fields_limit, self.field_limit)
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
                path, query = path.partition(b"#")[0], query.partition(b"#")[0]
            host = headers.get(b"HTTP_HOST")
        else:
            path, query, host = _other_target(method, target, version, headers)
        if host is None:
            host = _no_host(version)
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
            self.state, self.trailer_lines = CHUNK_SIZE_STATE, 0
        else:
            self.state, self.remaining = BODY, head.content_length
        self.sink.on_head(head)


def _request_line_refused(data: bytes, start: int, end: int, line_limit: int) -> HttpError:
    """Why the request line is refused (only on the error path)."""
    eol = data.find(b"\r\n", start, end + 2)
    if eol - start > line_limit:
        return line_too_long(line_limit)
    return request_line_error(data[start:eol])


def _version_refused(major: bytes, minor: bytes, size: int, line_limit: int) -> HttpError:
    """A request line too long, or of an HTTP version not 1.x."""
    if size > line_limit:
        return line_too_long(line_limit)
    return HttpError(505, f"HTTP version {major.decode()}.{minor.decode()} is not "
                          f"supported; use HTTP/1.1")


def _no_host(version: bytes) -> bytes:
    """The host of a request without one: none, and only HTTP/1.0 may do without."""
    if version == b"1.1":
        raise HttpError(400, "An HTTP/1.1 request must have a Host header")
    return b""


def _check_section(section: bytes, count: int, fields_limit: int, field_limit: int) -> None:
    """The header section (its lines with their CRLFs, `count` of them fields) is
    refused, or it is long and each of its fields is checked against the limit."""
    if count != section.count(b"\n"):
        raise header_error(section)
    if count > fields_limit:
        raise too_many_fields(fields_limit)
    size = field_limit - 2  # gunicorn counts a field's CRLF
    for raw in section.split(b"\r\n"):
        if len(raw) > size:
            raise field_too_large(field_limit)


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
