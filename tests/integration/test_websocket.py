"""Upgrade to a generic app (`--app-start-command`): a real WebSocket server and client
(the `websockets` package) talk through the helper agent, which tunnels the connection
both ways once the app answers 101, as Passenger does for Node apps."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator

import psutil
import pytest
from websockets.sync.client import connect

from raw_http import Reader
from support import TESTS, PassengerServer, running_server, wait_for

WEBSOCKET_APP = TESTS / "apps" / "websocket"


@pytest.fixture(scope="module")
def server() -> Iterator[PassengerServer]:
    command = f"exec {sys.executable} server.py"
    with running_server(WEBSOCKET_APP, "--app-start-command", command,
                        "--max-pool-size", "1") as srv:
        yield srv


def test_a_websocket_is_tunnelled_both_ways(server: PassengerServer) -> None:
    with connect(f"ws://127.0.0.1:{server.port}/chat", open_timeout=10) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "echo: hello"
        big = bytes(range(256)) * 4096  # 1 MiB each way: flow control on both sides
        ws.send(big)
        assert ws.recv(timeout=10) == big
        for i in range(50):
            ws.send(f"message {i}")
        assert [ws.recv(timeout=10) for _ in range(50)] == [
            f"echo: message {i}" for i in range(50)]


def test_an_open_websocket_does_not_hold_the_process(server: PassengerServer) -> None:
    """One process (--max-pool-size 1): plain requests are served while sockets are open."""
    with connect(f"ws://127.0.0.1:{server.port}/a", open_timeout=10) as first, \
            connect(f"ws://127.0.0.1:{server.port}/b", open_timeout=10) as second:
        status, _, body = server.get("/")
        assert status == 200 and body.startswith(b"plain pid=")
        first.send("1")
        second.send("2")
        assert (first.recv(timeout=10), second.recv(timeout=10)) == ("echo: 1", "echo: 2")
    assert server.get("/")[0] == 200


def test_a_refused_upgrade_is_one_response_then_close(server: PassengerServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /refuse HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        reader = Reader(sock)
        deadline = time.monotonic() + 10
        status, _, body = reader.response(deadline)
        assert status == 403 and body == b"no WebSocket here\n"
        assert reader.closed(deadline)


def test_closing_the_client_closes_the_app_side(server: PassengerServer) -> None:
    (pid,) = server.app_pids()

    def app_connections() -> int:
        return sum(1 for c in psutil.Process(pid).net_connections("tcp")
                   if c.status == psutil.CONN_ESTABLISHED)

    before = app_connections()
    with connect(f"ws://127.0.0.1:{server.port}/gone", open_timeout=10) as ws:
        ws.send("x")
        assert ws.recv(timeout=10) == "echo: x"
        assert app_connections() == before + 1
        ws.socket.close()  # abruptly, without a closing handshake
        wait_for(lambda: app_connections() == before, 10,
                 message="the app's side of the tunnel closed")
