"""The helper-agent/app frames, encoded by one side and decoded by the other (the app
side is the stdlib-only loader's own reader). Every value carries its length: no byte of
any value can reach another field, and a frame that is cut or garbled is a clean
ProtocolError, never a wrong environ."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passenger.common import app_protocol as proto
from passenger.helper_agent.wsgi_handler import BodyReader

latin1_text = st.text(st.characters(max_codepoint=255), max_size=60)


def body_frames(chunks: list[bytes]) -> bytes:
    return b"".join(proto.encode_chunk(c) for c in chunks if c) + proto.END


def encode_environ(env: dict[str, str]) -> bytes:
    items = [part.encode("latin-1") for pair in env.items() for part in pair]
    return proto.encode_fields(items)


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


def test_body_reader_ends_early_when_the_connection_is_cut() -> None:
    """A client gone mid-upload: the app reads a short body, not an exception."""
    cut = body_frames([b"hello", b"world"])[:-8]  # the second frame is half there
    reader = BodyReader(io.BufferedReader(io.BytesIO(cut)), proto)
    assert reader.read() == b"hello"
    assert reader.read() == b"" and reader.lost


@given(st.dictionaries(latin1_text, latin1_text, max_size=12))
def test_environ_round_trips_any_keys_and_values(env: dict[str, str]) -> None:
    """NUL, CR, LF, '=' or anything else in a key or value stays where it was put."""
    framed = encode_environ(env)
    assert proto.LENGTH.unpack_from(framed)[0] == len(framed) - 4
    assert proto.decode_environ(framed[4:]) == env


def test_a_path_with_nul_cannot_add_environ_keys() -> None:
    """Issue 10, finding 1: a decoded PATH_INFO that spells out other keys."""
    env = {"PATH_INFO": "/x\0REMOTE_ADDR\x0010.0.0.1\0REMOTE_USER\0admin\0",
           "REMOTE_ADDR": "127.0.0.1"}
    decoded = proto.decode_environ(encode_environ(env)[4:])
    assert decoded == env and "REMOTE_USER" not in decoded


@given(st.dictionaries(latin1_text, latin1_text, min_size=1, max_size=8), st.data())
def test_a_cut_environ_block_is_a_clean_error(env: dict[str, str], data: st.DataObject
                                              ) -> None:
    block = encode_environ(env)[4:]
    cut = data.draw(st.integers(0, len(block) - 1))
    with pytest.raises(proto.ProtocolError):
        proto.decode_environ(block[:cut])


@given(st.binary(max_size=200))
def test_garbage_never_decodes_to_something_else(garbage: bytes) -> None:
    """Any bytes either decode to exactly what encodes back to them, or are refused."""
    try:
        items = proto.decode_fields(garbage)
    except proto.ProtocolError:
        return
    assert proto.encode_fields([i.encode("latin-1") for i in items])[4:] == garbage


@given(st.lists(latin1_text, max_size=9).filter(lambda items: len(items) % 2 == 1))
def test_an_odd_number_of_items_is_not_an_environ(items: list[str]) -> None:
    with pytest.raises(proto.ProtocolError):
        proto.decode_environ(proto.encode_fields([i.encode("latin-1") for i in items])[4:])


def test_response_head_round_trip() -> None:
    framed = proto.encode_response_head(12, "200 OK", [("Content-Type", "text/plain")],
                                        proto.HAS_DATE)
    payload = framed[4:]
    assert proto.LENGTH.unpack_from(framed)[0] == len(payload)
    assert proto.decode_response_head(payload) == (
        12, proto.HAS_DATE, b"200 OK\r\nContent-Type: text/plain\r\n")
    with pytest.raises(proto.ProtocolError):
        proto.decode_response_head(payload[:5])
