"""Issue 10's ten findings, each as a client and an operator see it on a real server:
what the app is told, what the client gets back, what the log says."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from hostile_requests import CASES
from raw_http import Reader, exchange
from support import INSTRUMENTED_APP, PassengerServer, running_server, wait_for


@pytest.fixture(scope="module")
def server() -> Iterator[PassengerServer]:
    with running_server(INSTRUMENTED_APP, "--min-instances", "1") as srv:
        yield srv


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PassengerServer]:
    """A server with an access log, one process, and no trusted proxy."""
    access_log = tmp_path_factory.mktemp("access") / "access.log"
    with running_server(INSTRUMENTED_APP, "--min-instances", "1", "--max-pool-size", "1",
                        "--access-log", str(access_log),
                        "--forwarded-allow-ips", "192.0.2.1") as srv:
        srv.access_log_path = access_log  # type: ignore[attr-defined]
        yield srv


def app_environ(server: PassengerServer, target: str, headers: bytes = b"") -> dict[str, str]:
    """GET `target` (sent as is) on /env..., and return the environ the app saw."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET " + target.encode() + b" HTTP/1.1\r\nHost: x\r\n" + headers
                     + b"\r\n")
        status, _, body = Reader(sock).response(time.monotonic() + 10)
    assert status == 200, body
    environ: dict[str, str] = json.loads(body)
    return environ


def response_to(port: int, request: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        return Reader(sock).response(time.monotonic() + 10, request.startswith(b"HEAD "))


def get(path: str, extra: bytes = b"", method: bytes = b"GET") -> bytes:
    return method + b" " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n"


# -- 1. no client byte reaches another environ key --------------------------------------

def test_1_a_nul_in_the_path_cannot_set_other_environ_keys(server: PassengerServer) -> None:
    env = app_environ(server, "/env%00REMOTE_ADDR%0010.0.0.1%00REMOTE_USER%00admin%00"
                              "HTTPS%00on%00REQUEST_METHOD%00DELETE%00SCRIPT_NAME%00/adm")
    assert env["PATH_INFO"] == ("/env\0REMOTE_ADDR\x0010.0.0.1\0REMOTE_USER\0admin\0HTTPS"
                                "\0on\0REQUEST_METHOD\0DELETE\0SCRIPT_NAME\0/adm")
    assert env["REMOTE_ADDR"] == "127.0.0.1" and "REMOTE_USER" not in env
    assert env["REQUEST_METHOD"] == "GET" and env["SCRIPT_NAME"] == ""
    assert env["wsgi.url_scheme"] == "http" and "HTTPS" not in env


def test_1_header_values_stay_in_their_own_key(server: PassengerServer) -> None:
    env = app_environ(server, "/env", b"X-Trick: a\x80=b;REMOTE_USER=admin\r\n")
    assert env["HTTP_X_TRICK"] == "a\x80=b;REMOTE_USER=admin" and "REMOTE_USER" not in env


# -- 2. repeated request headers are joined, none lost ---------------------------------

def test_2_repeated_headers_are_joined_in_order(server: PassengerServer) -> None:
    env = app_environ(server, "/env", b"X-Foo: a\r\nX-Foo: b\r\nCookie: session=1\r\n"
                                      b"Cookie: csrftoken=2\r\nX-Forwarded-For: 10.0.0.1\r\n"
                                      b"X-Forwarded-For: 10.0.0.2, 10.0.0.3\r\n")
    assert env["HTTP_X_FOO"] == "a, b"
    assert env["HTTP_COOKIE"] == "session=1; csrftoken=2"
    assert env["HTTP_X_FORWARDED_FOR"] == "10.0.0.1, 10.0.0.2, 10.0.0.3"


# -- 3. response splitting -----------------------------------------------------------

def test_3_a_header_value_with_crlf_is_a_500_not_a_second_header(
        server: PassengerServer) -> None:
    status, headers, _ = response_to(
        server.port, get("/header?name=X-Bad&value=a%0d%0aInjected:%20yes"))
    assert status == 500 and b"injected" not in headers and b"x-bad" not in headers
    server.wait_for_log("the value of the response header 'X-Bad' contains CR, LF")
    line = next(x for x in server.log().splitlines() if "'X-Bad'" in x)
    assert str(INSTRUMENTED_APP) in line  # the log names the app and the header


def test_3_a_redirect_to_a_decoded_path_sets_no_cookie(server: PassengerServer) -> None:
    status, headers, _ = response_to(server.port, get("/redir%0d%0aSet-Cookie:%20pwned=1"))
    assert status == 500 and b"set-cookie" not in headers and b"location" not in headers
    status, headers, _ = response_to(server.port, get("/redir/fine"))
    assert status == 302 and headers[b"location"] == b"/fine"


@pytest.mark.parametrize("name", ["X Bad", "X:Bad", "X\x00Bad", ""])
def test_3_a_header_name_that_is_not_a_token_is_a_500(server: PassengerServer,
                                                      name: str) -> None:
    assert response_to(server.port, get(f"/header?name={quote(name)}&value=v"))[0] == 500


# -- 4. no invented or forbidden Content-Length --------------------------------------

def test_4_head_of_a_streamed_response_has_no_length(server: PassengerServer) -> None:
    status, headers, body = response_to(server.port, get("/stream?n=3", method=b"HEAD"))
    assert status == 200 and body == b""
    assert b"content-length" not in headers and b"transfer-encoding" not in headers
    status, headers, body = response_to(server.port, get("/stream?n=3"))
    assert headers[b"transfer-encoding"] == b"chunked" and body == b"part 0\npart 1\npart 2\n"


def test_4_head_of_a_list_response_has_no_invented_length(server: PassengerServer) -> None:
    """Werkzeug answers HEAD with an empty body: that must not become Content-Length: 0."""
    status, headers, body = response_to(server.port, get("/status?code=200%20OK",
                                                         method=b"HEAD"))
    assert status == 200 and b"content-length" not in headers and body == b""


def test_4_the_apps_own_content_length_is_sent_once(server: PassengerServer) -> None:
    """Two Content-Length fields would make the response readable two ways (wrk refuses
    such a response outright)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(get("/sized", b"Connection: close\r\n"))
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.lower().count(b"content-length:") == 1 and body == b"sized\n"


@pytest.mark.parametrize("code", ["204 No Content", "304 Not Modified"])
def test_4_no_length_and_no_body_on_204_and_304(server: PassengerServer, code: str) -> None:
    """Also when the app wrongly returns a body: none of it reaches the client."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        reader = Reader(sock)
        sock.sendall(get(f"/status?code={quote(code)}&body={'x' * 18}") + get("/sized"))
        status, headers, _ = reader.response(time.monotonic() + 10)
        assert status == int(code[:3])
        assert b"content-length" not in headers and b"transfer-encoding" not in headers
        # no stray body bytes: the next response on the connection comes out clean
        status, headers, body = reader.response(time.monotonic() + 10)
        assert (status, body) == (200, b"sized\n")


# -- 5. behind a TLS-terminating proxy ------------------------------------------------

@pytest.mark.parametrize("header", [b"X-Forwarded-Proto: https", b"X-Forwarded-Ssl: on",
                                    b"X-Forwarded-Protocol: ssl",
                                    b"Forwarded: for=1.2.3.4;proto=https",
                                    b"Forwarded: for=a;proto=http, for=b;proto=https"])
def test_5_a_trusted_proxy_sets_the_scheme(server: PassengerServer, header: bytes) -> None:
    env = app_environ(server, "/env", header + b"\r\n")
    assert env["wsgi.url_scheme"] == "https" and env["HTTPS"] == "on"


def test_5_an_untrusted_peer_changes_nothing(logged: PassengerServer) -> None:
    env = app_environ(logged, "/env", b"X-Forwarded-Proto: https\r\nX-Forwarded-Ssl: on\r\n"
                                      b"X-Forwarded-For: 6.6.6.6\r\n")
    assert env["wsgi.url_scheme"] == "http" and "HTTPS" not in env
    assert env["HTTP_X_FORWARDED_PROTO"] == "https"  # still there, as a header
    assert env["REMOTE_ADDR"] == "127.0.0.1"


def test_5_contradicting_scheme_headers_from_a_trusted_proxy_are_refused(
        server: PassengerServer) -> None:
    status, _, body = response_to(server.port, get("/env", b"X-Forwarded-Proto: https\r\n"
                                                          b"X-Forwarded-Ssl: off\r\n"))
    assert status == 400 and b"Contradictory scheme headers" in body


# -- 6. and 7. head limits and Host rules (cases of the hostile-request table) --------

FINDINGS_6_7 = ["10,000 small header fields", "header fields over the limit",
                "request line of 200 KB", "an oversized head, then a pipelined GET",
                "HTTP/1.1 without Host", "two Host fields"]


@pytest.mark.parametrize("name", FINDINGS_6_7)
def test_6_7_limits_and_host(server: PassengerServer, name: str) -> None:
    case = next(c for c in CASES if c.name == name)
    assert exchange(server.port, case) == (list(case.statuses), True)


def test_7_the_absolute_form_authority_replaces_host(server: PassengerServer) -> None:
    env = app_environ(server, "http://real.example:8080/env?q=1")
    assert env["HTTP_HOST"] == "real.example:8080"
    assert env["PATH_INFO"] == "/env" and env["QUERY_STRING"] == "q=1"


# -- 8. Upgrade to a WSGI app: exactly one response -----------------------------------

def test_8_upgrade_to_a_wsgi_app_gets_one_response(server: PassengerServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(get("/", b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                              b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"))
        reader = Reader(sock)
        assert reader.response(time.monotonic() + 10)[0] == 200
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # nothing more: no second response
        sock.sendall(get("/"))
        assert reader.response(time.monotonic() + 10)[0] == 200


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_8_curl_http2_sees_no_excess(server: PassengerServer) -> None:
    result = subprocess.run(["curl", "-sS", "-v", "--http2", f"http://127.0.0.1:{server.port}/",
                             "-o", "/dev/null", "-w", "%{http_code}"], capture_output=True,
                            text=True, timeout=20, check=False)
    assert result.stdout == "200" and "Excess" not in result.stderr


# -- 9. a client that abandons an upload ----------------------------------------------

def test_9_an_abandoned_upload_ends_the_body_quietly(logged: PassengerServer) -> None:
    with socket.create_connection(("127.0.0.1", logged.port), timeout=10) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n\r\n")
        sock.sendall(b"u" * 1024 * 1024)
        time.sleep(0.3)
    access_log: Path = logged.access_log_path  # type: ignore[attr-defined]
    wait_for(lambda: '"POST /upload HTTP/1.1" 499' in access_log.read_text(), 10,
             message="the abandoned upload in the access log as 499")
    assert logged.get("/")[0] == 200  # the one process is free again
    log = logged.log()
    assert "Traceback" not in log and "ChannelLost" not in log


# -- 10. SERVER_SOFTWARE, wsgi.file_wrapper, Server and Date -----------------------------

def test_10_server_software_server_and_date(server: PassengerServer) -> None:
    env = app_environ(server, "/env")
    assert env["SERVER_SOFTWARE"].startswith("Passenger-Python/")
    status, headers, _ = response_to(server.port, get("/"))
    assert headers[b"server"] == env["SERVER_SOFTWARE"].encode()
    assert headers[b"date"].endswith(b" GMT")
    status, headers, _ = response_to(server.port, b"GET / HTTP/1.1\r\n\r\n")
    assert status == 400 and headers[b"server"] == env["SERVER_SOFTWARE"].encode()


def test_10_no_server_header_when_asked() -> None:
    with running_server(INSTRUMENTED_APP, "--no-server-header") as srv:
        status, headers, _ = response_to(srv.port, get("/"))
        assert status == 200 and b"server" not in headers and b"date" in headers
        status, headers, _ = response_to(srv.port, b"GET / HTTP/1.1\r\n\r\n")
        assert status == 400 and b"server" not in headers


@pytest.mark.parametrize("size", [0, 1, 65536 * 3 + 7])
def test_10_file_wrapper_sends_the_file_exactly(server: PassengerServer, tmp_path: Path,
                                                size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    path.chmod(0o644)
    tmp_path.chmod(0o755)
    status, headers, body = response_to(server.port, get(f"/file?path={path}"))
    assert status == 200 and body == data
    assert headers[b"content-length"] == str(size).encode()


def test_a_list_behind_an_object_goes_with_its_length(server: PassengerServer) -> None:
    """Django's HttpResponse iterates over a list: it is sent whole, with a
    Content-Length, not chunked, and still closed."""
    status, headers, body = response_to(server.port, get("/listobj"))
    assert (status, body) == (200, b"list-backed\n")
    assert headers[b"content-length"] == b"12" and b"transfer-encoding" not in headers
    server.wait_for_log("listobj closed")
