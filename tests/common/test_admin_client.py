"""The admin client's errors: the HTTP status a caller acts on (passenger-config's
--ignore-* flags look for 404) and the one line a user reads, against a real HTTP server
on a Unix socket and against a socket nobody listens on."""

from __future__ import annotations

import contextlib
import gc
import http.server
import json
import socket
import socketserver
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from passenger.common import admin_paths
from passenger.common.admin_client import AdminError, request


class _NotFound(http.server.BaseHTTPRequestHandler):
    """Answers every POST as the helper agent answers an unknown PID."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"error": "no running app process with PID 1"}).encode()
        self.send_response(404, "Error")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # not on the test's stderr


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        conn, _ = super().get_request()
        return conn, ("local", 0)  # BaseHTTPRequestHandler wants a (host, port)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Unix socket paths must stay under 108 bytes: not in pytest's deep tmp_path."""
    with tempfile.TemporaryDirectory(prefix="adm.") as path:
        yield Path(path)


@pytest.fixture
def not_found_server(short_dir: Path) -> Iterator[Path]:
    path = short_dir / "admin.sock"
    server = _UnixHTTPServer(str(path), _NotFound)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_an_error_answer_carries_its_status_and_the_reason_the_server_gave(
        not_found_server: Path) -> None:
    with pytest.raises(AdminError) as caught:
        request(not_found_server, "POST", admin_paths.DETACH_PROCESS, {"pid": 1},
                timeout=5)
    assert caught.value.status == 404
    assert str(caught.value) == ("the helper agent answered 404: no running app process "
                                 "with PID 1")


def test_a_socket_nobody_listens_on_has_no_status(short_dir: Path) -> None:
    path = short_dir / "admin.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))  # there, but never listening: connect() is refused
        with pytest.raises(AdminError) as caught:
            request(path, "GET", admin_paths.POOL, timeout=5)
    assert caught.value.status is None
    assert str(caught.value).startswith(f"cannot talk to the helper agent at {path}: ")
    del caught
    gc.collect()


def test_a_refused_connection_leaves_no_socket_open(short_dir: Path) -> None:
    path = short_dir / "admin.sock"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))
            for _ in range(3):
                with contextlib.suppress(AdminError):
                    request(path, "GET", admin_paths.POOL, timeout=5)
        gc.collect()
    unclosed = [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)]
    assert unclosed == []


def test_something_that_does_not_answer_in_http_is_one_line_with_no_status(
        short_dir: Path) -> None:
    path = short_dir / "admin.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen(1)

        def answer_garbage() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"SSH-2.0-not-http\r\n\r\n")

        thread = threading.Thread(target=answer_garbage, daemon=True)
        thread.start()
        with pytest.raises(AdminError) as caught:
            request(path, "GET", admin_paths.POOL, timeout=5)
        thread.join(5)
    assert caught.value.status is None
    assert str(caught.value) == (f"the helper agent at {path} did not answer in HTTP: "
                                 f"BadStatusLine")
