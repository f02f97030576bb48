"""Large response bodies: moved from the app's socket to the client's by splice(2) while
the client keeps up, byte for byte, with the next response on the connection intact;
and a client that slows down still frees the app process (the pump hands over to the
spool), as response buffering promises."""

from __future__ import annotations

import hashlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import INSTRUMENTED_APP, PassengerServer, running_server, syscall_results, wait_for

MB = 1024 * 1024


@pytest.fixture(scope="module")
def server() -> Iterator[PassengerServer]:
    """One app process: a request that gets an answer proves the process is free."""
    with running_server(INSTRUMENTED_APP, "--min-instances", "1", "--max-pool-size", "1",
                        "--send-timeout", "20") as srv:
        wait_for(lambda: len(srv.app_pids()) == 1, 10, message="an app process")
        yield srv


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("files") / "big.bin"
    path.write_bytes(bytes(range(256)) * (20 * MB // 256) + b"tail")
    path.chmod(0o644)
    path.parent.chmod(0o755)
    return path


def read_response(sock: socket.socket, pending: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """-> (head, body, what came after it), for a response with a Content-Length."""
    data = pending
    deadline = time.monotonic() + 60
    while b"\r\n\r\n" not in data:
        assert time.monotonic() < deadline, "no response head within 60 s"
        chunk = sock.recv(1 << 20)
        assert chunk, f"connection closed before the head: {data[:200]!r}"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    parts = [rest]
    got = len(rest)
    while got < length:
        assert time.monotonic() < deadline, f"{got} of {length} bytes within 60 s"
        chunk = sock.recv(1 << 20)
        assert chunk, f"connection closed after {got} of {length} bytes"
        parts.append(chunk)
        got += len(chunk)
    body = b"".join(parts)
    return head, body[:length], body[length:]


def pipelined(server: PassengerServer, *paths: str) -> list[tuple[bytes, bytes]]:
    """Every path asked for at once on one connection; (head, body) of each answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % p.encode()
                              for p in paths))
        answers, pending = [], b""
        for _ in paths:
            head, body, pending = read_response(sock, pending)
            answers.append((head, body))
        return answers


def test_large_bodies_arrive_whole_and_the_next_response_follows(
        server: PassengerServer, big_file: Path) -> None:
    (big_head, big), (file_head, file_body), (_, chunks), (_, small) = pipelined(
        server, "/big?mb=32", f"/file?path={big_file}", "/chunks?n=3000&size=1000",
        "/sized")
    assert big_head.startswith(b"HTTP/1.1 200") and big == b"x" * (32 * MB)
    # More chunks than one sendmsg(2) takes, each in its place.
    assert chunks == b"".join(bytes([i % 256]) * 1000 for i in range(3000))
    assert file_head.startswith(b"HTTP/1.1 200")
    assert hashlib.sha256(file_body).digest() == hashlib.sha256(big_file.read_bytes()).digest()
    assert small == b"sized\n"


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_large_bodies_go_by_splice(server: PassengerServer, big_file: Path,
                                   tmp_path: Path) -> None:
    helper = server.agent_pid("PassengerHelperAgent")
    with syscall_results(helper, "splice", tmp_path / "trace") as moved:
        answers = pipelined(server, "/big?mb=32", f"/file?path={big_file}")
    assert [len(body) for _, body in answers] == [32 * MB, big_file.stat().st_size]
    # Bytes into the client's socket: the calls alternate app -> pipe, pipe -> client;
    # count half of all.
    total = 32 * MB + big_file.stat().st_size
    assert sum(moved) / 2 > 0.9 * total, f"{sum(moved) // 2} of {total} bytes by splice"


def test_a_reader_that_slows_down_frees_the_process(server: PassengerServer) -> None:
    """32 MB to a client taking 64 KB every 5 ms (~12 MB/s, so ~2.7 s in all): the one
    app process must serve another request long before that client is done."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        slow.sendall(b"GET /big?mb=32 HTTP/1.1\r\nHost: x\r\n\r\n")
        received = len(slow.recv(65536))
        started = time.monotonic()
        other: list[float] = []

        def ask() -> None:
            t0 = time.monotonic()
            status, _, body = server.get("/", timeout=10)
            assert status == 200 and body.startswith(b"pid=")
            other.append(time.monotonic() - t0)

        asker = threading.Thread(target=ask)
        asker.start()
        while received < 32 * MB and time.monotonic() - started < 30:
            chunk = slow.recv(65536)
            if not chunk:
                break
            received += len(chunk)
            time.sleep(0.005)
        asker.join(15)
    assert received >= 32 * MB, f"the slow reader got {received} bytes"
    assert other and other[0] < 1.0, f"the other request waited {other} s"
    assert time.monotonic() - started > 1.5  # the reader really was slow


def test_an_app_that_answers_before_reading_a_big_upload_serves_the_next_request(
        server: PassengerServer) -> None:
    """The body waited in a file (request buffering); the app answered without reading
    it. The process must get the end of the body and serve the next request."""
    status, _, body = server.get("/early", method="POST", body=b"u" * (8 * MB), timeout=10)
    assert (status, body) == (401, b"no\n")
    status, _, body = server.get("/digest", method="POST", body=b"v" * (3 * MB), timeout=10)
    assert (status, body) == (200, f"{3 * MB} {hashlib.sha256(b'v' * (3 * MB)).hexdigest()}\n"
                              .encode())
