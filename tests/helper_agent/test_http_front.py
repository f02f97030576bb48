"""The HTTP front end against a real server: keep-alive, bodies, streaming, HEAD, bad
input and app failures, as a client sees them."""

from __future__ import annotations

import html
import json
import socket
import time
from collections.abc import Iterator

import pytest

from raw_http import read_until
from support import INSTRUMENTED_APP, PassengerServer, running_server, wait_for


@pytest.fixture(scope="module")
def server() -> Iterator[PassengerServer]:
    with running_server(INSTRUMENTED_APP, "--min-instances", "1") as srv:
        yield srv


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes or `timeout` passes."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                if not (chunk := sock.recv(65536)):
                    break
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


def test_keep_alive_serves_several_requests_on_one_connection(server: PassengerServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        for _ in range(3):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = read_until(sock, lambda d: b"pid=" in d and d.endswith(b"\n"))
            assert data.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"Connection: close" not in data


def test_pipelined_requests_are_answered_in_order(server: PassengerServer) -> None:
    reply = raw_exchange(server.port, b"GET /env?n=1 HTTP/1.1\r\nHost: a\r\n\r\n"
                                      b"GET /env?n=2 HTTP/1.1\r\nHost: b\r\n"
                                      b"Connection: close\r\n\r\n")
    assert reply.count(b"HTTP/1.1 200 OK") == 2
    assert reply.index(b'"QUERY_STRING": "n=1"') < reply.index(b'"QUERY_STRING": "n=2"')


def test_content_length_body_reaches_the_app(server: PassengerServer) -> None:
    status, _, body = server.get("/echo", method="POST", body=b"x" * 100_000)
    assert status == 200 and body == b"x" * 100_000


def test_chunked_body_reaches_the_app_dechunked(server: PassengerServer) -> None:
    reply = raw_exchange(server.port, b"POST /echo HTTP/1.1\r\nHost: x\r\n"
                                      b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                                      b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 OK")
    assert reply.endswith(b"hello world")


def test_streaming_response_is_chunked(server: PassengerServer) -> None:
    reply = raw_exchange(server.port, b"GET /stream?n=3 HTTP/1.1\r\nHost: x\r\n"
                                      b"Connection: close\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"7\r\npart 0\n\r\n7\r\npart 1\n\r\n7\r\npart 2\n\r\n0\r\n\r\n"


def test_streaming_response_to_http10_client_is_closed_delimited(
        server: PassengerServer) -> None:
    reply = raw_exchange(server.port, b"GET /stream?n=2 HTTP/1.0\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"chunked" not in head and b"Connection: close" in head
    assert body == b"part 0\npart 1\n"


def test_head_gets_the_apps_own_length_and_no_body(server: PassengerServer) -> None:
    reply = raw_exchange(server.port, b"HEAD /sized HTTP/1.1\r\nHost: x\r\n"
                                      b"Connection: close\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 6\r\n" in head
    assert body == b""


def test_no_content_response_has_no_body_framing(server: PassengerServer) -> None:
    reply = raw_exchange(server.port, b"GET /status HTTP/1.1\r\nHost: x\r\n"
                                      b"Connection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 204 No Content")
    assert b"chunked" not in reply


def test_cgi_variables_and_headers(server: PassengerServer) -> None:
    status, _, body = server.get("/env/a%20b?q=1", headers={"X-Custom": "v",
                                                            "Content-Type": "text/x"})
    env = json.loads(body)
    assert status == 200
    assert env["PATH_INFO"] == "/env/a b" and env["QUERY_STRING"] == "q=1"
    assert env["REQUEST_URI"] == "/env/a%20b?q=1"
    assert env["HTTP_X_CUSTOM"] == "v" and env["CONTENT_TYPE"] == "text/x"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1" and env["REMOTE_ADDR"] == "127.0.0.1"
    assert "wsgi.input" not in env  # only strings are reported


def test_app_environment_variables(server: PassengerServer) -> None:
    osenv = json.loads(server.get("/osenv")[2])
    assert osenv["PASSENGER_APP_ENV"] == "development" == osenv["WSGI_ENV"]
    assert osenv["IN_PASSENGER"] == "1" and osenv["PYTHONUNBUFFERED"] == "1"


def test_header_with_underscore_is_dropped(server: PassengerServer) -> None:
    _, _, body = server.get("/env", headers={"X_Spoof": "1", "X-Real": "2"})
    env = json.loads(body)
    assert "HTTP_X_SPOOF" not in env and env["HTTP_X_REAL"] == "2"


BAD_REQUEST = b"400 Bad Request"


@pytest.mark.parametrize(("request_bytes", "status", "reason"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\nThis header has no colon\r\n\r\n", BAD_REQUEST,
     "A header line without a colon: b'This header has no colon'"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
     BAD_REQUEST, "The request has both Content-Length and Transfer-Encoding"),
    (b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", BAD_REQUEST,
     "An HTTP/1.1 request must have a Host header"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", BAD_REQUEST,
     "Malformed request line b'\\x16\\x03\\x01\\x02\\x00\\x01\\x00\\x01\\xfc\\x03\\x03garbage'"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", BAD_REQUEST,
     "Invalid Content-Length b'-5'"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
     b"431 Request Header Fields Too Large",
     "A header field is longer than 8190 bytes with its CRLF (--limit-request-field-size)"),
])
def test_bad_requests_get_a_specific_error_and_the_server_stays_up(
        server: PassengerServer, request_bytes: bytes, status: bytes, reason: str) -> None:
    reply = raw_exchange(server.port, request_bytes)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 " + status + b"\r\n"), reply[:200]
    assert b"\r\nConnection: close" in head
    # The page names the reason (HTML-escaped), and so does the log line.
    assert f"<p>{html.escape(reason)}</p>".encode() in body, body
    server.wait_for_log(f"Rejected a request from 127.0.0.1: {status[:3].decode()} {reason}")
    assert server.get("/")[0] == 200


def test_app_exception_gives_500_a_log_line_and_the_process_lives_on(
        server: PassengerServer) -> None:
    pid_before = server.app_pids()
    status, _, body = server.get("/error")
    assert status == 500 and b"Internal Server Error" in body
    wait_for(lambda: "deliberate failure for the test" in server.log(), 5,
             message="the traceback in the log")
    assert server.app_pids() == pid_before
    assert server.get("/")[0] == 200


def test_app_output_goes_to_the_log_with_its_pid(server: PassengerServer) -> None:
    status, headers, _ = server.get("/print?line=marker-31337")
    assert status == 200
    pid = headers["x-pid"]
    wait_for(lambda: f"App {pid} output: marker-31337" in server.log(), 5,
             message="the app's line in the log")


def test_stdlib_asyncio_fallback_serves_the_same() -> None:
    with running_server(INSTRUMENTED_APP, env={"PASSENGER_EVENT_LOOP": "asyncio"}) as srv:
        srv.wait_for_log("(event loop: asyncio)")
        reply = raw_exchange(srv.port, b"POST /echo HTTP/1.1\r\nHost: x\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\n"
                                       b"5\r\nhello\r\n0\r\n\r\n"
                                       b"GET /stream?n=2 HTTP/1.1\r\nHost: x\r\n"
                                       b"Connection: close\r\n\r\n")
        assert reply.count(b"HTTP/1.1 200 OK") == 2
        assert b"\r\n\r\nhello" in reply and reply.endswith(b"0\r\n\r\n")
