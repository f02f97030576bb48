"""The loader's check of an app's status and headers (pure logic): what is sent, what is
refused with a 500, what is dropped because the helper agent frames the response."""

from __future__ import annotations

from typing import Any

import pytest

from passenger.common import app_protocol as proto
from passenger.helper_agent.wsgi_handler import InvalidResponse, ResponseHead


def sent(status: str, headers: list[Any]) -> tuple[int, int, bytes]:
    head = ResponseHead(status, headers)
    length, flags, text = proto.decode_response_head(head.encode(proto, head.content_length)
                                                     [4:])
    return length, flags, text


def test_framing_and_hop_by_hop_fields_are_left_to_the_helper_agent() -> None:
    length, flags, text = sent("200 OK", [
        ("Content-Type", "text/plain"), ("Content-Length", "5"), ("Connection", "close"),
        ("Transfer-Encoding", "chunked"), ("Keep-Alive", "timeout=5"), ("X-A", "1")])
    assert (length, flags) == (5, 0)
    assert text == b"200 OK\r\nContent-Type: text/plain\r\nX-A: 1\r\n"


def test_the_apps_own_date_and_server_are_kept_and_flagged() -> None:
    _, flags, text = sent("200 OK", [("date", "Mon, 01 Jan 2001 00:00:00 GMT"),
                                      ("Server", "mine")])
    assert flags == proto.HAS_DATE | proto.HAS_SERVER and b"Server: mine" in text


def test_headers_given_as_lists_work_twice() -> None:
    for _ in range(2):  # the second time from the caches
        assert sent("404 Not Found", [["X-List", "yes"]])[2] == b"404 Not Found\r\nX-List: yes\r\n"


@pytest.mark.parametrize(("status", "headers", "why"), [
    ("200 OK", [("X-Bad", "a\r\nInjected: yes")], "contains CR, LF"),
    ("200 OK", [("X-Bad", "a\nb")], "contains CR, LF"),
    ("200 OK", [("X-Bad", "a\0b")], "contains CR, LF, NUL"),
    ("200 OK", [("X-Bad", "tab\tis fine but bell \x07 is not")], "control character"),
    ("200 OK", [("X Bad", "v")], "invalid response header name"),
    ("200 OK", [("X:Bad", "v")], "invalid response header name"),
    ("200 OK", [("", "v")], "invalid response header name"),
    ("200 OK", [("X-Bad", "snow ☃")], "beyond latin-1"),
    ("200 OK", [("X-Bad", 5)], "not a str"),
    ("200 OK", [("Content-Length", "-1")], "invalid Content-Length"),
    ("200", [], "invalid status line"),
    ("OK", [], "invalid status line"),
    ("200 OK\r\nX: y", [], "invalid status line"),
    ("101 Switching Protocols", [], "invalid status line"),
])
def test_what_could_split_the_response_is_refused(status: str, headers: list[Any],
                                                  why: str) -> None:
    with pytest.raises(InvalidResponse, match=why):
        ResponseHead(status, headers)


def test_a_valid_pair_seen_before_is_still_checked_by_its_value() -> None:
    ResponseHead("200 OK", [("X-Same", "fine")])
    with pytest.raises(InvalidResponse):
        ResponseHead("200 OK", [("X-Same", "not\r\nfine")])
