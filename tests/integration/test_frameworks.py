"""Real Flask and Django apps, directly and behind real nginx terminating TLS: the
framework must believe what the client did (https), keep every cookie, and take a
client that abandons an upload for a disconnect, not an app failure; and nothing an
app's header carries can split the response on its way through nginx."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie

import pytest
from webservers import NGINX, TlsProxy, installed, running

from raw_http import Reader
from support import INSTRUMENTED_APP, TESTS, PassengerServer, running_server, wait_for

needs_nginx = pytest.mark.skipif(not installed(NGINX), reason="nginx is not installed")

FLASK_APP = TESTS / "apps" / "flask_app"
DJANGO_APP = TESTS / "apps" / "django_app"


@pytest.fixture(scope="module")
def django_server() -> Iterator[PassengerServer]:
    with running_server(DJANGO_APP, "--min-instances", "1") as srv:
        yield srv


@pytest.fixture(scope="module")
def flask_server() -> Iterator[PassengerServer]:
    with running_server(FLASK_APP, "--min-instances", "1", "--max-pool-size", "1") as srv:
        yield srv


@needs_nginx
def test_django_csrf_checked_post_behind_tls_is_accepted(
        django_server: PassengerServer) -> None:
    """Finding 5: Django compares a browser's Origin (https://...) with the scheme it
    believes; told http, it answered 403 "CSRF verification failed"."""
    with running(TlsProxy(django_server.port)) as proxy:
        assert isinstance(proxy, TlsProxy)
        conn = proxy.client()
        conn.request("GET", "/form")
        response = conn.getresponse()
        token = response.read().decode()
        cookie = SimpleCookie(response.getheader("Set-Cookie"))["csrftoken"].value
        origin = f"https://127.0.0.1:{proxy.port}"
        conn.request("POST", "/submit", body="x=1", headers={
            "Cookie": f"csrftoken={cookie}", "X-CSRFToken": token, "Origin": origin,
            "Content-Type": "application/x-www-form-urlencoded"})
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"accepted, secure=True")
        conn.request("POST", "/submit", body="x=1", headers={
            "Cookie": f"csrftoken={cookie}", "X-CSRFToken": token,
            "Origin": "https://evil.example"})
        response = conn.getresponse()
        assert response.status == 403  # the check itself still works
        response.read()
        conn.close()


@needs_nginx
def test_flask_redirects_to_https_behind_tls(flask_server: PassengerServer) -> None:
    with running(TlsProxy(flask_server.port)) as proxy:
        assert isinstance(proxy, TlsProxy)
        conn = proxy.client()
        conn.request("GET", "/go")
        response = conn.getresponse()
        response.read()
        assert response.status == 302
        assert response.getheader("Location") == f"https://127.0.0.1:{proxy.port}/target"
        conn.close()


@needs_nginx
def test_response_splitting_stays_out_through_nginx() -> None:
    """Finding 3 through a real proxy: a header value with CRLF never becomes a header."""
    with running_server(INSTRUMENTED_APP) as server, \
            running(TlsProxy(server.port)) as proxy:
        assert isinstance(proxy, TlsProxy)
        conn = proxy.client()
        conn.request("GET", "/header?name=X-Bad&value=a%0d%0aInjected:%20yes")
        response = conn.getresponse()
        response.read()
        assert response.status == 500 and response.getheader("Injected") is None
        conn.close()


def test_django_session_survives_two_cookie_lines(django_server: PassengerServer) -> None:
    """Finding 2: with the session cookie on one Cookie line and another cookie on the
    next, the last line used to win and the user was logged out."""
    status, headers, _ = django_server.get("/login?user=alice")
    session = SimpleCookie(headers["set-cookie"])["sessionid"].value
    with socket.create_connection(("127.0.0.1", django_server.port), timeout=10) as sock:
        sock.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\n"
                     b"Cookie: sessionid=" + session.encode() + b"\r\n"
                     b"Cookie: theme=dark\r\n\r\n")
        status, _, body = Reader(sock).response(time.monotonic() + 10)
    assert (status, body) == (200, b"alice")


def test_flask_sees_an_abandoned_upload_as_a_disconnect(
        flask_server: PassengerServer) -> None:
    """Finding 9: announce 10 MB, send 1 MB, close. Flask logged "Exception on /upload"
    and a traceback ending in ChannelLost; now werkzeug sees a short body (a 400 that
    nobody reads) and the one process is free at once."""
    with socket.create_connection(("127.0.0.1", flask_server.port), timeout=10) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n"
                     b"Content-Type: application/octet-stream\r\n\r\n" + b"u" * 1048576)
        time.sleep(0.3)
    status, _, body = flask_server.get("/target")
    assert (status, body) == (200, b"target\n")
    status, _, body = flask_server.get("/upload", method="POST", body=b"abc")
    assert (status, body) == (200, b"got 3\n")
    wait_for(lambda: "Rejected a request" in flask_server.log(), 5,
             message="the abandoned upload in the log")
    log = flask_server.log()
    assert "Exception on /upload" not in log and "Traceback" not in log
