"""A request's channel to its app process, from the client's side: slow readers, early
answers to uploads, clients that go away, uploads while the app is busy, generic-app
framing, app errors that look like network errors, and `100 Continue` ordering. One
process, so a wedged channel would show at once as a hang. Request bodies stream to the
app here (`--no-request-buffering`): that is where a channel meets a client's upload."""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from raw_http import read_until
from support import INSTRUMENTED_APP, PassengerServer, running_server, wait_for


@pytest.fixture(scope="module")
def server() -> Iterator[PassengerServer]:
    with running_server(INSTRUMENTED_APP, "--min-instances", "1",
                        "--max-pool-size", "1", "--no-request-buffering") as srv:
        yield srv


def the_process(server: PassengerServer) -> dict[str, int]:
    """The one app process's entry in passenger-status --show=json."""
    (process,) = server.status()["groups"][0]["processes"]
    return dict(process)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_response(sock: socket.socket) -> bytes:
    """Read one Content-Length-delimited response."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_slow_reader_of_a_big_response_does_not_wedge_the_process(
        server: PassengerServer) -> None:
    served = the_process(server)["processed"]
    with connect(server.port) as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        slow.sendall(b"GET /big?mb=2 HTTP/1.1\r\nHost: x\r\n\r\n")
        # Nothing read yet: the app has finished all the same, and its process is free.
        wait_for(lambda: (p := the_process(server))["processed"] == served + 1
                 and p["sessions"] == 0, 5, message="the app done with the unread response")
        status, _, body = server.get("/", timeout=5)
        assert status == 200 and body.startswith(b"pid=")
        size = 2 * 1024 * 1024
        reply = read_until(slow, lambda d: len(d.partition(b"\r\n\r\n")[2]) >= size, 20)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and body == b"x" * size


def test_early_answer_to_an_upload_leaves_nothing_for_the_next_request(
        server: PassengerServer) -> None:
    with connect(server.port) as uploader:
        uploader.sendall(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n"
                         + b"a" * 10)
        assert read_response(uploader).startswith(b"HTTP/1.1 401")
        status, _, body = server.get("/env", timeout=5)
        # The rest of the first body, made to look like a request head, goes nowhere.
        forged = b"REQUEST_METHOD\0GET\0PATH_INFO\0/env\0HTTP_X_INJECTED\0yes\0"
        uploader.sendall(b"\x00\x00\x00" + bytes([len(forged)]) + forged + b"b" * 100)
        status2, _, body2 = server.get("/env", timeout=5)
    assert status == status2 == 200
    assert b"HTTP_X_INJECTED" not in body and b"HTTP_X_INJECTED" not in body2


def test_client_gone_mid_upload_or_mid_stream_frees_the_process(
        server: PassengerServer) -> None:
    (pid,) = server.app_pids()
    with connect(server.port) as uploader:
        uploader.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                         b"hello")
        wait_for(lambda: the_process(server)["sessions"] == 1, 5,
                 message="the upload in the app")
    assert server.get("/", timeout=5)[0] == 200
    with connect(server.port) as watcher:
        watcher.sendall(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
        read_until(watcher, lambda d: d.startswith(b"HTTP/1.1 200") and b"tick" in d)
    # The app's iteration is closed (its generator's finally runs) and the process serves.
    server.wait_for_log(f"App {pid} output: endless stopped after ")
    assert server.get("/", timeout=5)[0] == 200
    assert server.app_pids() == [pid]
    assert the_process(server)["sessions"] == 0


def test_upload_to_a_busy_app_is_held_back_not_buffered(server: PassengerServer) -> None:
    import threading

    busy = threading.Thread(target=server.get, args=("/sleep?s=3",), kwargs={"timeout": 10})
    busy.start()
    wait_for(lambda: the_process(server)["sessions"] == 1, 5, message="the app busy")
    helper = psutil.Process(server.agent_pid("PassengerHelperAgent"))
    before = helper.memory_info().rss
    with connect(server.port) as uploader:
        uploader.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 300000000\r\n\r\n")
        uploader.settimeout(1.0)
        pushed = 0
        try:
            while pushed < 300_000_000:
                pushed += uploader.send(b"u" * 65536)
        except TimeoutError:
            pass
    busy.join(10)
    grown = helper.memory_info().rss - before
    assert pushed < 50_000_000, f"the server took {pushed} bytes without pushing back"
    assert grown < 50_000_000


def test_app_connection_errors_are_app_errors(server: PassengerServer) -> None:
    (pid,) = server.app_pids()
    status, _, _ = server.get("/connerr")
    assert status == 500
    wait_for(lambda: "the database is down (deliberately)" in server.log(), 5,
             message="the traceback in the log")
    assert server.app_pids() == [pid]


def test_100_continue_comes_after_earlier_pipelined_responses(
        server: PassengerServer) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"GET /sleep?s=0.3 HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        first = read_until(sock, lambda d: b"100 Continue" in d)
        assert first.startswith(b"HTTP/1.1 200 OK"), first[:40]
        sock.sendall(b"hello")
        rest = first.split(b"HTTP/1.1 100 Continue\r\n\r\n", 1)[1]
        rest = read_until(sock, lambda d: d.endswith(b"hello"), data=rest)
        assert rest.startswith(b"HTTP/1.1 200 OK")


@contextlib.contextmanager
def generic_app(do_get_body: str) -> Iterator[PassengerServer]:
    """A server running a keep-alive HTTP/1.1 app of our own through
    --app-start-command; `do_get_body` is its do_GET, which answers `body`."""
    site = Path(tempfile.mkdtemp(prefix="pgen.", dir="/tmp"))
    (site / "app.py").write_text(
        "import http.server, os\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    protocol_version = 'HTTP/1.1'\n"
        "    def do_GET(self):\n"
        + textwrap.indent(textwrap.dedent(do_get_body), " " * 8) +
        "        self.send_response(200)\n"
        "        self.send_header('Content-Length', str(len(body)))\n"
        "        self.end_headers()\n"
        "        self.wfile.write(body)\n"
        "    def log_message(self, *args): pass\n"
        "http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n")
    try:
        with running_server(site, "--app-start-command", "exec python3 app.py") as server:
            yield server
    finally:
        shutil.rmtree(site, ignore_errors=True)


def test_generic_app_gets_a_chunked_get_body_framed() -> None:
    with generic_app("body = self.path.encode()\n") as gen:
        with connect(gen.port) as smuggler:
            smuggled = b"GET /admin-only HTTP/1.1\r\nHost: x\r\n\r\n"
            smuggler.sendall(b"GET /public HTTP/1.1\r\nHost: x\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n"
                             + b"%x\r\n" % len(smuggled) + smuggled + b"\r\n0\r\n\r\n")
            first = read_response(smuggler)
        status, _, body = gen.get("/victim")
        assert body == b"/victim" and status == 200
        assert first.endswith(b"/public")


def test_generic_app_closing_a_kept_alive_connection_is_retried_not_a_502() -> None:
    # Each connection gets one answer; a second request on it is dropped unanswered, as a
    # server whose keep-alive timeout fires just as the request arrives would do.
    dropping = """
        if getattr(self, 'served', False):
            self.close_connection = True
            return
        self.served = True
        body = str(os.getpid()).encode()
    """
    with generic_app(dropping) as gen:
        answers = [gen.get("/", timeout=5) for _ in range(4)]
        assert [status for status, _, _ in answers] == [200] * 4
        assert len({body for _, _, body in answers}) == 1  # the same process throughout
