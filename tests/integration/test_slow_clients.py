"""Slow and hostile clients against a real server with short timeouts: trickled heads,
stalled uploads, readers that never read, huge uploads, idle keep-alive floods and a
descriptor limit lowered under load. None of them may hold an app process or grow the
helper agent's memory; normal requests are served throughout."""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import signal
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from raw_http import Reader
from support import INSTRUMENTED_APP, PassengerServer, http_request, running_server, wait_for

TIMEOUT = 2  # seconds, for every timeout of the server under test
TIMEOUTS = ("--client-header-timeout", str(TIMEOUT), "--client-body-timeout", str(TIMEOUT),
            "--send-timeout", str(TIMEOUT), "--keepalive-timeout", str(TIMEOUT))
MB = 1024 * 1024


@pytest.fixture(scope="module", autouse=True)
def enough_descriptors() -> Iterator[None]:
    """This client opens thousands of sockets: its soft limit up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 6000:
        pytest.skip(f"the descriptor hard limit ({hard}) is below the 6,000 these tests use")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def server() -> Iterator[PassengerServer]:
    with running_server(INSTRUMENTED_APP, "--min-instances", "2", "--max-pool-size", "2",
                        *TIMEOUTS) as srv:
        wait_for(lambda: len(srv.app_pids()) == 2, 10, message="two app processes")
        yield srv


def helper_rss(server: PassengerServer) -> int:
    return int(psutil.Process(server.agent_pid("PassengerHelperAgent")).memory_info().rss)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def is_closed(sock: socket.socket, wait: float = 0.0) -> bool:
    """Whether the server closed `sock` (whatever it said first)."""
    sock.settimeout(wait)
    try:
        while data := sock.recv(65536):
            del data
        return True
    except (BlockingIOError, TimeoutError):
        return False
    except OSError:
        return True


def latency(port: int, path: str = "/") -> float:
    started = time.monotonic()
    status, _, _ = http_request(port, path, timeout=10)
    assert status == 200
    return time.monotonic() - started


def test_trickling_heads_do_not_slow_others_and_are_closed_in_time(
        server: PassengerServer) -> None:
    """500 connections sending one header byte a second (slowloris)."""
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 1000
    socks = [connect(server.port) for _ in range(500)]
    stop = threading.Event()

    def trickle() -> None:
        for i in range(len(head)):
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.send(head[i:i + 1])
            if stop.wait(1.0):
                return

    trickler = threading.Thread(target=trickle, daemon=True)
    started = time.monotonic()
    trickler.start()
    try:
        times = [latency(server.port) for _ in range(20)]
        assert statistics.median(times) < 0.050, times
        deadline = started + TIMEOUT + 1.5  # one header timeout, plus the sweep
        open_socks = list(socks)
        while open_socks and time.monotonic() < deadline:
            open_socks = [s for s in open_socks if not is_closed(s)]
            time.sleep(0.1)
        assert not open_socks, f"{len(open_socks)} trickling connections still open"
    finally:
        stop.set()
        trickler.join(5)
        for sock in socks:
            sock.close()
    server.wait_for_log("timed out reading the request header")


def test_stalled_uploads_hold_no_process_and_get_408(server: PassengerServer) -> None:
    stalled = []
    for _ in range(6):
        sock = connect(server.port)
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
        stalled.append(sock)
    try:
        time.sleep(0.2)
        assert latency(server.port) < 1.0
        for sock in stalled:
            status, _, body = Reader(sock).response(time.monotonic() + TIMEOUT + 3)
            assert status == 408 and b"--client-body-timeout" in body
            assert is_closed(sock, wait=2)
    finally:
        for sock in stalled:
            sock.close()


def test_readers_that_never_read_hold_no_process_nor_memory(
        server: PassengerServer) -> None:
    before = helper_rss(server)
    readers = []
    for _ in range(8):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(b"GET /big?mb=32 HTTP/1.1\r\nHost: x\r\n\r\n")
        readers.append(sock)
    try:
        time.sleep(1.0)  # the app processes produce 8 x 32 MB meanwhile
        assert latency(server.port) < 1.0
        grown = helper_rss(server) - before
        assert grown < 64 * MB, f"the helper agent grew by {grown // MB} MB"
        # They take nothing for --send-timeout: closed.
        wait_for(lambda: all(is_closed(s) for s in readers), TIMEOUT + 3,
                 message="the readers that never read closed")
    finally:
        for sock in readers:
            sock.close()
    server.wait_for_log("timed out reading the response")


def test_a_gigabyte_upload_to_an_app_that_waits_arrives_whole(
        server: PassengerServer) -> None:
    before = helper_rss(server)
    block = os.urandom(MB)
    digest = hashlib.sha256()
    peak = 0
    with connect(server.port) as sock:
        sock.sendall(b"POST /digest?wait=5 HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: %d\r\n\r\n" % (1024 * MB))
        for i in range(1024):
            chunk = block[i % 256:] + block[:i % 256]
            digest.update(chunk)
            sock.sendall(chunk)
            if i % 64 == 0:
                peak = max(peak, helper_rss(server))
        status, _, body = Reader(sock).response(time.monotonic() + 60)
        peak = max(peak, helper_rss(server))
    assert status == 200 and body == f"{1024 * MB} {digest.hexdigest()}\n".encode()
    assert peak - before < 64 * MB, f"the helper agent grew by {(peak - before) // MB} MB"


def test_idle_keepalive_connections_are_closed_and_memory_comes_back(
        server: PassengerServer) -> None:
    for _ in range(200):  # warm: what any first connections allocate for good
        with connect(server.port) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            Reader(sock).response(time.monotonic() + 10)
    time.sleep(1.5)
    before = helper_rss(server)
    socks = []
    try:
        for _ in range(5000):  # one request each, answered, then left open and idle
            sock = connect(server.port)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert Reader(sock).response(time.monotonic() + 20)[0] == 200
            socks.append(sock)
        assert latency(server.port) < 1.0
        wait_for(lambda: all(is_closed(s) for s in socks), TIMEOUT + 5,
                 message="5,000 idle connections closed after --keepalive-timeout")
    finally:
        for sock in socks:
            sock.close()
    deadline = time.monotonic() + 10
    while (grown := helper_rss(server) - before) >= 10 * MB and time.monotonic() < deadline:
        time.sleep(0.1)
    assert grown < 10 * MB, f"the helper agent kept {grown / MB:.1f} MB more than before"


def test_server_sent_events_are_not_held_back(server: PassengerServer) -> None:
    with connect(server.port) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /sse?n=5&every=0.1 HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"data: 0" not in data:
            data += sock.recv(65536)
        first = time.monotonic() - started
        while b"data: 1" not in data:
            data += sock.recv(65536)
        second = time.monotonic() - started
    assert first < 0.050, f"the first event took {first * 1000:.0f} ms"
    assert 0.08 < second < 0.5, f"the second event came at {second * 1000:.0f} ms"


def test_buffer_files_leave_nothing_behind() -> None:
    """Bodies beyond 128 KiB go to unlinked files in buffers/: open while needed, gone
    when the request ends, and gone with a killed helper agent too."""
    with running_server(INSTRUMENTED_APP, "--min-instances", "1") as server:
        instance = server.instance_dir()
        assert instance is not None
        buffers = instance / "buffers"
        helper = server.agent_pid("PassengerHelperAgent")

        def spool_files(pid: int) -> list[str]:
            found = []
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if str(buffers) in os.readlink(fd):
                        found.append(os.readlink(fd))
            return found

        with connect(server.port) as sock:
            sock.sendall(b"POST /digest HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                         % (8 * MB) + b"x" * (4 * MB))
            wait_for(lambda: spool_files(helper), 5, message="a spool file in use")
            assert all(name.endswith("(deleted)") for name in spool_files(helper))
            assert list(buffers.iterdir()) == []  # no names: nothing can be left over
            sock.sendall(b"x" * (4 * MB))
            assert Reader(sock).response(time.monotonic() + 30)[0] == 200
        wait_for(lambda: not spool_files(helper), 5, message="the spool file closed")
        # A file someone left there (an older version, say) goes at the next start.
        (buffers / "left-over").write_bytes(b"old")
        os.kill(helper, signal.SIGKILL)
        wait_for(lambda: server.find_agent_pid("PassengerHelperAgent") not in (None, helper),
                 10, message="a new helper agent")
        wait_for(lambda: not (buffers / "left-over").exists(), 10,
                 message="the left-over buffer removed")


def test_out_of_descriptors_the_server_still_manages_itself() -> None:
    """The descriptor limit lowered at run time, then clients exhausting it: accepts
    fail (logged, with a count) and wait in the backlog; passenger-status still answers
    and a killed app process is still replaced."""
    with running_server(INSTRUMENTED_APP, "--min-instances", "1") as server:
        helper = psutil.Process(server.agent_pid("PassengerHelperAgent"))
        soft, hard = helper.rlimit(psutil.RLIMIT_NOFILE)
        helper.rlimit(psutil.RLIMIT_NOFILE, (helper.num_fds() + 60, hard))
        clients = []
        try:
            for _ in range(150):
                clients.append(connect(server.port))
            server.wait_for_log("accept(s) of new clients failed", timeout=10)
            status = server.run_tool("passenger-status")
            assert status.returncode == 0, status.stderr
            (pid,) = server.app_pids()
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: (p := server.app_pids()) and pid not in p, 15,
                     message="the killed app process replaced")
        finally:
            for sock in clients:
                sock.close()
        helper.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
        assert latency(server.port) < 5.0  # and once they are gone, clients are served


def test_continue_and_queue_full_come_before_the_body_is_read() -> None:
    """Request buffering reads the body first, but not blindly: a client that asks
    `Expect: 100-continue` is told to go on at once, and a request that cannot be
    queued gets its 503 before it uploads anything."""
    with running_server(INSTRUMENTED_APP, "--min-instances", "1", "--max-pool-size", "1",
                        "--max-request-queue-size", "1") as server:
        with connect(server.port) as sock:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                         b"Expect: 100-continue\r\n\r\n")
            assert sock.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(b"hello")
            status, _, body = Reader(sock).response(time.monotonic() + 10)
            assert (status, body) == (200, b"hello")
        busy = threading.Thread(target=http_request, args=(server.port, "/sleep?s=2"))
        queued = threading.Thread(target=http_request, args=(server.port, "/sleep?s=0.1"))
        busy.start()
        time.sleep(0.3)
        queued.start()
        time.sleep(0.3)
        try:
            with connect(server.port) as sock:
                sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: 100000000\r\n\r\n")
                status, _, _ = Reader(sock).response(time.monotonic() + 1.0)
                assert status == 503
        finally:
            busy.join(10)
            queued.join(10)


def test_streamed_upload_to_an_app_that_waits_is_held_back() -> None:
    """--no-request-buffering: the app's socket fills, the client is slowed by TCP, and
    the helper agent's memory stays put (it grew by 2 GB for a 2 GB upload before)."""
    with running_server(INSTRUMENTED_APP, "--min-instances", "1", "--max-pool-size", "1",
                        "--no-request-buffering") as server:
        before = helper_rss(server)
        with connect(server.port) as sock:
            sock.sendall(b"POST /digest?wait=3 HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: %d\r\n\r\n" % (300 * MB))
            sock.settimeout(1.5)
            pushed = 0
            with contextlib.suppress(TimeoutError):
                while pushed < 300 * MB:
                    pushed += sock.send(b"u" * 65536)
            grown = helper_rss(server) - before
            assert pushed < 64 * MB, f"{pushed // MB} MB taken while the app was not reading"
            assert grown < 64 * MB, f"the helper agent grew by {grown // MB} MB"
            sock.settimeout(30)
            sock.sendall(b"u" * (300 * MB - pushed))
            status, _, body = Reader(sock).response(time.monotonic() + 60)
            expected = hashlib.sha256(b"u" * (300 * MB)).hexdigest()
            assert (status, body) == (200, f"{300 * MB} {expected}\n".encode())


@pytest.mark.parametrize("buffering", [[], ["--no-request-buffering"]])
def test_bodies_over_client_max_body_size_get_413(buffering: list[str]) -> None:
    with running_server(INSTRUMENTED_APP, "--client-max-body-size", "1",
                        *buffering) as server:
        with connect(server.port) as sock:  # announced: refused before it is sent
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                         % (MB + 1))
            assert Reader(sock).response(time.monotonic() + 5)[0] == 413
        with connect(server.port) as sock:  # chunked: refused when it grows too big
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                         b"\r\n\r\n")
            with contextlib.suppress(OSError):
                for _ in range(20):
                    sock.sendall(b"10000\r\n" + b"c" * 65536 + b"\r\n")
            assert Reader(sock).response(time.monotonic() + 5)[0] == 413
        status, _, body = http_request(server.port, "/echo", method="POST", body=b"b" * MB)
        assert (status, len(body)) == (200, MB)


def test_keepalive_timeout_zero_turns_keep_alive_off() -> None:
    with running_server(INSTRUMENTED_APP, "--keepalive-timeout", "0") as server, \
            connect(server.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = Reader(sock)
        status, headers, _ = reader.response(time.monotonic() + 5)
        assert status == 200 and headers[b"connection"] == b"close"
        assert reader.closed(time.monotonic() + 5)
