"""The one set of connection-specific header fields (app_protocol.HOP_BY_HOP): what it
holds, and that the app-side loader leaves every one of them out of a response head
(the helper agent frames the response for the client)."""

from __future__ import annotations

from passenger.common import app_protocol as proto
from passenger.helper_agent.wsgi_handler import ResponseHead


def test_the_set_is_rfc_9110s_connection_specific_fields_in_lower_case() -> None:
    expected = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
                "trailer", "upgrade", "proxy-authenticate", "proxy-authorization"}
    assert set(proto.HOP_BY_HOP) == expected


def test_the_loader_sends_none_of_them_whatever_their_case() -> None:
    headers = [(name.title(), "x") for name in sorted(proto.HOP_BY_HOP)]
    headers += [("X-Kept", "1"), ("Content-Length", "0")]
    for _ in range(2):  # the second time from the caches
        head = ResponseHead("200 OK", headers)
        _, _, text = proto.decode_response_head(
            head.encode(proto, head.content_length)[4:])
        assert text == b"200 OK\r\nX-Kept: 1\r\n"
