"""The hostile-request table: raw bytes a client may send, and what the server must do.

Each case is named, holds the exact bytes, the status of every response the client must
get (in order; a 100 Continue counts), and whether the server closes the connection
afterwards. `eof`: the client half-closes its side after sending. Run by
`test_hostile_requests.py` against a real server (the instrumented app answers 200 to any
method and path it does not know) and by `test_http_parser.py` against the parser alone.

Where RFC 9112 allows something we accept it; where it forbids something we answer the
4xx/5xx it calls for and close, so no request can be read two ways (smuggling).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    statuses: tuple[int, ...]
    closes: bool
    eof: bool = False


H = b"Host: x\r\n"
GET = b"GET / HTTP/1.1\r\n" + H + b"\r\n"
LINE_LIMIT = 8190
FIELD_LIMIT = 8190
FIELDS_LIMIT = 100


def post(headers: bytes, body: bytes, path: bytes = b"/echo") -> bytes:
    return b"POST " + path + b" HTTP/1.1\r\n" + H + headers + b"\r\n" + body


def chunked(body: bytes, path: bytes = b"/echo") -> bytes:
    return post(b"Transfer-Encoding: chunked\r\n", body, path)


def request_line_of(size: int) -> bytes:
    """A GET whose request line is exactly `size` bytes."""
    fixed = len(b"GET / HTTP/1.1")
    return b"GET /" + b"a" * (size - fixed) + b" HTTP/1.1\r\n" + H + b"\r\n"


def field_of(size: int) -> bytes:
    """A GET with one header field of exactly `size` bytes, its CRLF included (as
    gunicorn counts it)."""
    return b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"b" * (size - 9) + b"\r\n\r\n"


def fields(count: int) -> bytes:
    """A GET with `count` header fields, Host included."""
    return (b"GET / HTTP/1.1\r\n" + H
            + b"".join(b"X-F%d: v\r\n" % i for i in range(count - 1)) + b"\r\n")


CASES = [
    # -- accepted: everything RFC 9112 allows reaches the app ---------------------------
    Case("minimal GET", GET, (200,), closes=False),
    Case("HTTP/1.0 without Host", b"GET / HTTP/1.0\r\n\r\n", (200,), closes=True),
    Case("HTTP/1.0 keep-alive", b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
         (200,), closes=False),
    Case("Connection: close", b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n",
         (200,), closes=True),
    Case("close wins over keep-alive", b"GET / HTTP/1.0\r\nConnection: keep-alive, close"
         b"\r\n\r\n", (200,), closes=True),
    Case("empty lines before the request line", b"\r\n\r\n" + GET, (200,), closes=False),
    Case("any token method", b"BREW /pot HTTP/1.1\r\n" + H + b"\r\n", (200,), closes=False),
    Case("method of token symbols", b"-B.L_A~R!G#H /x HTTP/1.1\r\n" + H + b"\r\n", (200,),
         closes=False),
    Case("lower-case method", b"get / HTTP/1.1\r\n" + H + b"\r\n", (200,), closes=False),
    Case("OPTIONS *", b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", (200,), closes=False),
    Case("absolute-form target", b"GET http://example.com/a?b=1 HTTP/1.1\r\n" + H + b"\r\n",
         (200,), closes=False),
    Case("absolute-form https and IPv6", b"GET https://[::1]:8080/ HTTP/1.1\r\n" + H
         + b"\r\n", (200,), closes=False),
    Case("HTTP/1.2 is served as 1.1", b"GET / HTTP/1.2\r\n" + H + b"\r\n", (200,),
         closes=False),
    Case("raw UTF-8 and quotes in the target",
         "GET /à%20k/\"q\"?x=\"y\" HTTP/1.1\r\n".encode() + H + b"\r\n", (200,),
         closes=False),
    Case("fragment in the target", b"GET /a?b#frag HTTP/1.1\r\n" + H + b"\r\n", (200,),
         closes=False),
    Case("header names of token symbols", b"GET / HTTP/1.1\r\n" + H + b"X.Custom|Pipe~!: ok"
         b"\r\n\r\n", (200,), closes=False),
    Case("obs-text and tabs in a value", b"GET / HTTP/1.1\r\n" + H + b"X-V: \tcaf\xc3\xa9 a"
         b"\tb \t\r\n\r\n", (200,), closes=False),
    Case("empty header value", b"GET / HTTP/1.1\r\n" + H + b"X-Empty:\r\nX-Blank:   \r\n"
         b"\r\n", (200,), closes=False),
    Case("empty Host", b"GET / HTTP/1.1\r\nHost:\r\n\r\n", (200,), closes=False),
    Case("repeated fields are joined", b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\r\nX-A: 2\r\n"
         b"Cookie: a=1\r\nCookie: b=2\r\n\r\n", (200,), closes=False),
    Case("header with underscore is dropped, not confused",
         post(b"Transfer_Encoding: chunked\r\nContent-Length: 5\r\n", b"hello"), (200,),
         closes=False),
    Case("GET with a body", b"GET / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello",
         (200,), closes=False),
    Case("Content-Length with leading zeros", post(b"Content-Length: 005\r\n", b"hello"),
         (200,), closes=False),
    Case("chunked body", chunked(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), (200,),
         closes=False),
    Case("chunked, any case", post(b"Transfer-Encoding: ChUnKeD\r\n", b"0\r\n\r\n"),
         (200,), closes=False),
    Case("chunk extensions are ignored",
         chunked(b"5;a=b;c=\"d e\"\r\nhello\r\n6 ; x\r\n world\r\n0;last\r\n\r\n"), (200,),
         closes=False),
    Case("chunk sizes with zeros and upper-case hex",
         chunked(b"0005\r\nhello\r\nA\r\n0123456789\r\n000\r\n\r\n"), (200,), closes=False),
    Case("trailers are read and dropped",
         chunked(b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\nVary: *\r\n\r\n"), (200,),
         closes=False),
    Case("Expect: 100-continue", post(b"Expect: 100-continue\r\nContent-Length: 5\r\n",
                                      b"hello"), (100, 200), closes=False),
    Case("three pipelined requests", GET * 3, (200, 200, 200), closes=False),
    Case("pipelined after a chunked body", chunked(b"5\r\nhello\r\n0\r\n\r\n") + GET,
         (200, 200), closes=False),
    Case("nothing after an HTTP/1.0 request", b"GET / HTTP/1.0\r\n\r\n" + GET, (200,),
         closes=True),
    Case("nothing after Connection: close",
         b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n" + GET, (200,),
         closes=True),
    Case("Upgrade to a WSGI app: one plain response",
         b"GET / HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
         (200,), closes=False),
    Case("h2c upgrade (curl --http2): one plain response",
         b"GET / HTTP/1.1\r\n" + H + b"Connection: Upgrade, HTTP2-Settings\r\n"
         b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n", (200,),
         closes=False),
    Case("half-closed client still gets every answer", GET * 2, (200, 200), closes=True,
         eof=True),
    Case("percent-encoded NUL in the path", b"GET /x%00REMOTE_USER%00admin HTTP/1.1\r\n"
         + H + b"\r\n", (200,), closes=False),
    Case("request line at the limit", request_line_of(LINE_LIMIT), (200,), closes=False),
    Case("header field at the limit", field_of(FIELD_LIMIT), (200,), closes=False),
    Case("header fields at the limit", fields(FIELDS_LIMIT), (200,), closes=False),

    # -- smuggling: one way to frame a body, or 400 --------------------------------------
    Case("Content-Length and chunked", post(b"Content-Length: 4\r\nTransfer-Encoding: "
                                            b"chunked\r\n", b"0\r\n\r\n" + GET),
         (400,), closes=True),
    Case("chunked and Content-Length", post(b"Transfer-Encoding: chunked\r\nContent-Length:"
                                            b" 4\r\n", b"0\r\n\r\n" + GET), (400,),
         closes=True),
    Case("two equal Content-Lengths", post(b"Content-Length: 5\r\nContent-Length: 5\r\n",
                                           b"hello"), (400,), closes=True),
    Case("two different Content-Lengths", post(b"Content-Length: 3\r\nContent-Length: 5"
                                               b"\r\n", b"hello"), (400,), closes=True),
    Case("Content-Length list", post(b"Content-Length: 5, 5\r\n", b"hello"), (400,),
         closes=True),
    Case("negative Content-Length", post(b"Content-Length: -1\r\n", b""), (400,),
         closes=True),
    Case("Content-Length with a sign", post(b"Content-Length: +5\r\n", b"hello"), (400,),
         closes=True),
    Case("hex Content-Length", post(b"Content-Length: 0x5\r\n", b"hello"), (400,),
         closes=True),
    Case("Content-Length with inner space", post(b"Content-Length: 1 2\r\n", b"x"),
         (400,), closes=True),
    Case("empty Content-Length", post(b"Content-Length:\r\n", b""), (400,), closes=True),
    Case("Content-Length beyond 18 digits", post(b"Content-Length: 1" + b"0" * 19 + b"\r\n",
                                                 b""), (400,), closes=True),
    Case("Transfer-Encoding in HTTP/1.0",
         b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", (400,),
         closes=True),
    Case("chunked not last", post(b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"),
         (400,), closes=True),
    Case("chunked twice", post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"
                               b"\r\n", b"0\r\n\r\n"), (400,), closes=True),
    Case("identity alone", post(b"Transfer-Encoding: identity\r\n", b""), (400,),
         closes=True),
    Case("a coding we do not know before chunked",
         post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"), (501,), closes=True),
    Case("xchunked", post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), (400,),
         closes=True),
    Case("empty element in Transfer-Encoding", post(b"Transfer-Encoding: ,chunked\r\n",
                                                    b"0\r\n\r\n"), (400,), closes=True),
    Case("chunk size not hex", chunked(b"zz\r\nhello\r\n0\r\n\r\n"), (400,), closes=True),
    Case("chunk size with underscore, then a smuggled request",
         chunked(b"5\r\nhello\r\n6_0\r\n world\r\n0\r\n\r\n") + b"POST /after HTTP/1.1\r\n"
         + H + b"\r\n", (400,), closes=True),
    Case("chunk size with a sign", chunked(b"+5\r\nhello\r\n0\r\n\r\n"), (400,),
         closes=True),
    Case("negative chunk size", chunked(b"-5\r\nhello\r\n0\r\n\r\n"), (400,), closes=True),
    Case("space after the chunk size", chunked(b"5 \r\nhello\r\n0\r\n\r\n"), (400,),
         closes=True),
    Case("space before the chunk size", chunked(b" 5\r\nhello\r\n0\r\n\r\n"), (400,),
         closes=True),
    Case("chunk size line ending in LF", chunked(b"5\nhello\r\n0\r\n\r\n"), (400,),
         closes=True),
    Case("bare CR in a chunk extension", chunked(b"5;a=b\rc\r\nhello\r\n0\r\n\r\n"), (400,),
         closes=True),
    Case("chunk longer than its size", chunked(b"5\r\nhelloXX\r\n0\r\n\r\n"), (400,),
         closes=True),
    Case("chunk size beyond 16 hex digits", chunked(b"1" + b"0" * 16 + b"\r\n"), (400,),
         closes=True),
    Case("empty chunk size line", chunked(b"\r\nhello\r\n0\r\n\r\n"), (400,), closes=True),
    Case("Content-Length in the trailers",
         chunked(b"5\r\nhello\r\n0\r\nContent-Length: 99\r\n\r\n"), (400,), closes=True),
    Case("Host in the trailers", chunked(b"5\r\nhello\r\n0\r\nHost: evil\r\n\r\n"), (400,),
         closes=True),
    Case("obs-fold in the trailers", chunked(b"0\r\nX: a\r\n b\r\n\r\n"), (400,),
         closes=True),

    # -- limits (gunicorn's, counted per request) ------------------------------------
    Case("request line over the limit", request_line_of(LINE_LIMIT + 1), (414,),
         closes=True),
    Case("request line of 200 KB", b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\n" + H
         + b"\r\n", (414,), closes=True),
    Case("header field over the limit", field_of(FIELD_LIMIT + 1), (431,), closes=True),
    Case("one header field of 100 KB", field_of(100_000), (431,), closes=True),
    Case("header fields over the limit", fields(FIELDS_LIMIT + 1), (431,), closes=True),
    Case("10,000 small header fields", fields(10_000), (431,), closes=True),
    Case("an oversized head, then a pipelined GET",
         field_of(FIELD_LIMIT + 1) + b"GET /second HTTP/1.1\r\n" + H + b"\r\n", (431,),
         closes=True),
    Case("limits count per request: two heads just within",
         fields(FIELDS_LIMIT) + fields(FIELDS_LIMIT), (200, 200), closes=False),

    # -- Host (RFC 9112 3.2) -----------------------------------------------------------
    Case("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\n\r\n", (400,), closes=True),
    Case("two Host fields", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", (400,),
         closes=True),
    Case("Host with a space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", (400,), closes=True),
    Case("Host with a slash", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", (400,), closes=True),
    Case("absolute-form without Host", b"GET http://example.com/ HTTP/1.1\r\n\r\n", (400,),
         closes=True),
    Case("absolute-form with user information",
         b"GET http://user:pass@example.com/ HTTP/1.1\r\n" + H + b"\r\n", (400,),
         closes=True),
    Case("absolute-form of another scheme", b"GET ftp://example.com/ HTTP/1.1\r\n" + H
         + b"\r\n", (400,), closes=True),

    # -- request targets, methods and versions -----------------------------------------
    Case("authority-form with GET", b"GET example.com:443 HTTP/1.1\r\n" + H + b"\r\n",
         (400,), closes=True),
    Case("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
         (405,), closes=True),
    Case("asterisk-form with GET", b"GET * HTTP/1.1\r\n" + H + b"\r\n", (400,),
         closes=True),
    Case("relative target", b"GET foo/bar HTTP/1.1\r\n" + H + b"\r\n", (400,), closes=True),
    Case("HTTP/2.0 in an HTTP/1 request line", b"GET / HTTP/2.0\r\n" + H + b"\r\n", (505,),
         closes=True),
    Case("HTTP/0.9 named", b"GET / HTTP/0.9\r\n\r\n", (505,), closes=True),
    Case("HTTP/0.9 request line", b"GET /\r\n\r\n", (400,), closes=True),
    Case("two-digit minor version", b"GET / HTTP/1.10\r\n" + H + b"\r\n", (400,),
         closes=True),
    Case("version without a dot", b"GET / HTTP/111\r\n" + H + b"\r\n", (400,), closes=True),
    Case("lower-case protocol name", b"GET / http/1.1\r\n" + H + b"\r\n", (400,),
         closes=True),
    Case("another protocol", b"GET / FTP/1.1\r\n" + H + b"\r\n", (400,), closes=True),
    Case("two spaces in the request line", b"GET  / HTTP/1.1\r\n" + H + b"\r\n", (400,),
         closes=True),
    Case("tab in the request line", b"GET\t/ HTTP/1.1\r\n" + H + b"\r\n", (400,),
         closes=True),
    Case("space at the end of the request line", b"GET / HTTP/1.1 \r\n" + H + b"\r\n",
         (400,), closes=True),
    Case("non-ASCII in the method", "GETß / HTTP/1.1\r\n".encode() + H + b"\r\n", (400,),
         closes=True),
    Case("method with a colon", b"GET: / HTTP/1.1\r\n" + H + b"\r\n", (400,), closes=True),
    Case("NUL in the method", b"GET\x00PROXY / HTTP/1.1\r\n" + H + b"\r\n", (400,),
         closes=True),
    Case("NUL in the target", b"GET /a\x00b HTTP/1.1\r\n" + H + b"\r\n", (400,),
         closes=True),
    Case("DEL in the target", b"GET /a\x7fb HTTP/1.1\r\n" + H + b"\r\n", (400,),
         closes=True),
    Case("a TLS ClientHello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
         (400,), closes=True),

    # -- header syntax: obs-fold, control bytes, line endings ---------------------------
    Case("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X-Fold: a\r\n b\r\n\r\n", (400,),
         closes=True),
    Case("obs-fold with a tab", b"GET / HTTP/1.1\r\n" + H + b"X-Fold: a\r\n\tb\r\n\r\n",
         (400,), closes=True),
    Case("header line without a colon", b"GET / HTTP/1.1\r\n" + H + b"NoColonHere\r\n\r\n",
         (400,), closes=True),
    Case("space before the colon", b"GET / HTTP/1.1\r\n" + H + b"Content-Length : 0\r\n"
         b"\r\n", (400,), closes=True),
    Case("empty header name", b"GET / HTTP/1.1\r\n" + H + b": value\r\n\r\n", (400,),
         closes=True),
    Case("non-ASCII header name", "GET / HTTP/1.1\r\nContent-Lengthß: 3\r\n".encode() + H
         + b"\r\n", (400,), closes=True),
    Case("NUL in a header name", b"GET / HTTP/1.1\r\n" + H + b"X-A\x00b: c\r\n\r\n", (400,),
         closes=True),
    Case("NUL in a header value", b"GET / HTTP/1.1\r\n" + H + b"X-A: b\x00c\r\n\r\n",
         (400,), closes=True),
    Case("BEL in a header value", b"GET / HTTP/1.1\r\n" + H + b"X-A: b\x07c\r\n\r\n",
         (400,), closes=True),
    Case("DEL in a header value", b"GET / HTTP/1.1\r\n" + H + b"X-A: b\x7fc\r\n\r\n",
         (400,), closes=True),
    Case("escape sequence in a header value", b"GET / HTTP/1.1\r\n" + H
         + b"X-A: \x1b]0;title\x07\r\n\r\n", (400,), closes=True),
    Case("bare CR in a header value", b"GET / HTTP/1.1\r\n" + H + b"X-A: b\rc\r\n\r\n",
         (400,), closes=True),
    Case("bare LF in a header value, smuggling a request",
         b"GET / HTTP/1.1\r\n" + H + b"X-A: a\nContent-Length: 26\r\n\r\n" + GET, (400,),
         closes=True),
    Case("bare LF line endings", b"GET / HTTP/1.1\nHost: x\n\n", (400,), closes=True),
    Case("bare LF line endings, half-closed", b"GET / HTTP/1.1\nHost: x\n\n", (400,),
         closes=True, eof=True),
    Case("a repeated Content-Type", b"GET / HTTP/1.1\r\n" + H + b"Content-Type: a/b\r\n"
         b"Content-Type: c/d\r\n\r\n", (400,), closes=True),
    Case("an expectation we cannot meet", post(b"Expect: 200-ok\r\nContent-Length: 0\r\n",
                                               b""), (417,), closes=True),

    # -- requests cut short ------------------------------------------------------------
    Case("head cut short by EOF", b"GET / HTTP/1.1\r\n" + H, (400,), closes=True, eof=True),
    Case("body cut short by EOF", post(b"Content-Length: 10\r\n", b"abc", b"/upload"),
         (400,), closes=True, eof=True),
    Case("chunked body cut short by EOF", chunked(b"5\r\nhel", b"/upload"), (400,),
         closes=True, eof=True),
]
