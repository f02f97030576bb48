"""The helper-agent/app frames, encoded by one side and decoded by the other (the app
side is the stdlib-only loader's own reader)."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st

from passenger.common import app_protocol as proto
from passenger.helper_agent.wsgi_loader import BodyReader


def body_frames(chunks: list[bytes]) -> bytes:
    return b"".join(proto.encode_chunk(c) for c in chunks if c) + proto.END


@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(1, 50))
def test_body_reader_reassembles_any_chunking(chunks: list[bytes], size: int) -> None:
    data = b"".join(chunks)
    reader = BodyReader(io.BufferedReader(io.BytesIO(body_frames(chunks) + b"NEXT")), proto)
    parts = []
    while part := reader.read(size):
        parts.append(part)
    assert b"".join(parts) == data
    assert reader.rfile.read() == b"NEXT"  # stops exactly at the end frame


def test_body_reader_readline_and_drain() -> None:
    stream = io.BufferedReader(io.BytesIO(body_frames([b"ab\ncd", b"\nef", b"gh"]) + b"X"))
    reader = BodyReader(stream, proto)
    assert reader.readline() == b"ab\n"
    assert reader.readline(1) == b"c"
    reader.drain()
    assert stream.read() == b"X"


@given(st.dictionaries(st.text("ABCDEFGHIJ_", min_size=1, max_size=12),
                       st.text(st.characters(max_codepoint=255, blacklist_characters="\0"),
                               max_size=40), max_size=10))
def test_environ_block_round_trip(env: dict[str, str]) -> None:
    block = b"".join(k.encode("latin-1") + b"\0" + v.encode("latin-1") + b"\0"
                     for k, v in env.items())
    framed = proto.encode_request_head(block)
    assert proto.LENGTH.unpack_from(framed)[0] == len(block)
    assert proto.decode_environ(framed[4:]) == env


def test_response_head_round_trip() -> None:
    framed = proto.encode_response_head(12, "200 OK", [("Content-Type", "text/plain")])
    payload = framed[4:]
    assert proto.LENGTH.unpack_from(framed)[0] == len(payload)
    assert proto.decode_response_head(payload) == (12, b"200 OK\r\nContent-Type: text/plain\r\n")
