"""The request parser alone (pure logic, no server): the hostile-request table fed whole,
byte by byte and in random pieces gives the same result; heads are read into exactly
the environ fields the app will see; the limits hold however a head is cut."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hostile_requests import CASES, Case
from passenger.helper_agent.http_parser import HttpError, Limits, RequestParser
from passenger.helper_agent.request_head import RequestHead


class Recorder:
    def __init__(self) -> None:
        self.heads: list[RequestHead] = []
        self.bodies: list[bytes] = []
        self.complete = 0

    def on_head(self, head: RequestHead) -> None:
        self.heads.append(head)
        self.bodies.append(b"")

    def on_body(self, data: bytes) -> None:
        self.bodies[-1] += data

    def on_message_complete(self) -> None:
        self.complete += 1


def parse(pieces: list[bytes], eof: bool = False, limits: Limits | None = None
          ) -> tuple[Recorder, HttpError | None]:
    recorder = Recorder()
    parser = RequestParser(recorder, limits or Limits())
    try:
        for piece in pieces:
            parser.feed(piece)
        if eof:
            parser.feed_eof()
    except HttpError as exc:
        return recorder, exc
    return recorder, None


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def expected_outcome(case: Case) -> tuple[int, int | None]:
    """-> (heads the parser hands on, the error status it raises or None)."""
    final = [s for s in case.statuses if s >= 200]
    if final and final[-1] >= 400:
        return -1, final[-1]  # the heads before the error are not counted
    return len(final), None


def check(case: Case, pieces: list[bytes]) -> None:
    recorder, error = parse(pieces, eof=case.eof)
    heads, status = expected_outcome(case)
    if status is None:
        assert error is None, f"{case.name}: {error}"
        assert len(recorder.heads) == heads
        assert recorder.complete == heads
    else:
        assert error is not None and error.status == status, f"{case.name}: {error}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_table_whole_and_byte_by_byte(case: Case) -> None:
    check(case, [case.raw])
    if len(case.raw) < 20_000:
        check(case, [case.raw[i:i + 1] for i in range(len(case.raw))])


@given(st.sampled_from(CASES), st.lists(st.integers(0, 1 << 20), max_size=6))
def test_table_in_random_pieces(case: Case, cuts: list[int]) -> None:
    check(case, split_at(case.raw, cuts))


BROWSER = (b"POST /a/b%20c?x=1&y=%00 HTTP/1.1\r\nHost: example.com:8080\r\n"
           b"User-Agent: Mozilla/5.0\r\nCookie: a=1\r\nAccept: text/html\r\n"
           b"Cookie: b=2\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n"
           b"Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\nX_Spoof: 1\r\n"
           b"Proxy: http://evil\r\n\r\n5\r\nhello\r\n0\r\n\r\n")


@given(st.lists(st.integers(0, 1 << 20), max_size=8))
def test_a_head_reads_the_same_however_it_is_cut(cuts: list[int]) -> None:
    recorder, error = parse(split_at(BROWSER, cuts))
    assert error is None
    (head,) = recorder.heads
    assert (head.method, head.path, head.query, head.version) == (
        b"POST", b"/a/b%20c", b"x=1&y=%00", b"1.1")
    assert head.headers == {
        b"HTTP_HOST": b"example.com:8080", b"HTTP_USER_AGENT": b"Mozilla/5.0",
        b"HTTP_COOKIE": b"a=1; b=2", b"HTTP_ACCEPT": b"text/html",
        b"HTTP_X_FORWARDED_FOR": b"10.0.0.1, 10.0.0.2", b"CONTENT_TYPE": b"text/plain",
        b"HTTP_TRANSFER_ENCODING": b"chunked"}  # X_Spoof and Proxy (httpoxy) dropped
    assert recorder.bodies == [b"hello"] and head.chunked and head.keep_alive


def test_absolute_form_authority_wins_over_host() -> None:
    recorder, _ = parse([b"GET http://real.example:81/p?q HTTP/1.1\r\nHost: other\r\n\r\n"])
    (head,) = recorder.heads
    assert head.host == b"real.example:81" == head.headers[b"HTTP_HOST"]
    assert (head.path, head.query) == (b"/p", b"q")


@pytest.mark.parametrize(("limits", "request_bytes", "status"), [
    (Limits(request_line=20), b"GET /" + b"a" * 10 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (Limits(fields=2), b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\n\r\n", 431),
    (Limits(field_size=10), b"GET / HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n", 431),
])
def test_limits_are_the_configured_ones(limits: Limits, request_bytes: bytes,
                                        status: int) -> None:
    for pieces in ([request_bytes], [request_bytes[i:i + 1] for i in range(
            len(request_bytes))]):
        _, error = parse(pieces, limits=limits)
        assert error is not None and error.status == status


def test_a_partial_head_is_refused_as_soon_as_it_breaks_a_limit() -> None:
    """The parser never holds more than the limits allow, even without a CRLF."""
    _, error = parse([b"GET /" + b"a" * 9000])
    assert error is not None and error.status == 414
    _, error = parse([b"GET / HTTP/1.1\r\nX: " + b"a" * 9000])
    assert error is not None and error.status == 431


def test_nothing_is_read_after_an_error() -> None:
    recorder, error = parse([b"GET / HTTP/1.1\r\n\r\n" + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"])
    assert error is not None and not recorder.heads
