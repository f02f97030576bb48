"""`--socket FILE`: the server listens on a Unix socket instead of TCP, and a peer on it
counts as a trusted proxy (README: Options and defaults; Proxies)."""

from __future__ import annotations

import json
import socket

from passenger.common.admin_client import UnixHTTPConnection
from support import INSTRUMENTED_APP, PassengerServer, wait_for


def unix_get(path: str, target: str, headers: dict[str, str] | None = None
             ) -> tuple[int, bytes]:
    conn = UnixHTTPConnection(path)
    try:
        conn.request("GET", target, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def answers(path: str) -> bool:
    try:
        return unix_get(path, "/")[0] == 200
    except OSError:
        return False


def test_socket_option_serves_on_a_unix_socket_and_not_on_tcp() -> None:
    server = PassengerServer(INSTRUMENTED_APP)
    sock_path = str(server.registry / "http.sock")
    server.args += ["--socket", sock_path]
    server.start(wait_ready=False)
    try:
        wait_for(lambda: answers(sock_path), 20, interval=0.05, message="the Unix socket")
        status, body = unix_get(sock_path, "/")
        assert status == 200 and body.startswith(b"pid=")
        # Instead of TCP: nothing listens on the port the command line also named.
        with socket.socket() as tcp:
            assert tcp.connect_ex(("127.0.0.1", server.port)) != 0
        # A Unix socket peer is a trusted proxy: its X-Forwarded-Proto counts.
        status, body = unix_get(sock_path, "/env", {"X-Forwarded-Proto": "https"})
        env = json.loads(body)
        assert status == 200
        assert env["wsgi.url_scheme"] == "https" and env["HTTPS"] == "on"
    finally:
        server.stop()
