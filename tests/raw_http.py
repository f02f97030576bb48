"""Talking raw HTTP to a server in tests: send exact bytes, read whole responses back
(Content-Length, chunked, close-delimited, bodiless), and tell whether the server closed
the connection or keeps it open."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable

from hostile_requests import GET, Case

READ_TIMEOUT = 10.0


def read_until(sock: socket.socket, done: Callable[[bytes], bool], timeout: float = 5.0,
               data: bytes = b"") -> bytes:
    """Read until `done(data + what was read)` and return that; fails on EOF or after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not done(data):
        left = deadline - time.monotonic()
        assert left > 0, f"no complete answer within {timeout} s: {data[:200]!r}"
        sock.settimeout(left)
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection after {data[:200]!r}"
        data += chunk
    return data


class Reader:
    """Reads whole HTTP responses off a socket, within a deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = b""
        self.eof = False

    def _more(self, deadline: float) -> None:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            raise EOFError
        self.data += chunk

    def _until(self, marker: bytes, deadline: float) -> bytes:
        while marker not in self.data:
            self._more(deadline)
        head, _, self.data = self.data.partition(marker)
        return head

    def _exactly(self, size: int, deadline: float) -> bytes:
        while len(self.data) < size:
            self._more(deadline)
        out, self.data = self.data[:size], self.data[size:]
        return out

    def response(self, deadline: float, head_only: bool = False
                 ) -> tuple[int, dict[bytes, bytes], bytes]:
        """One response; `head_only`: it answers a HEAD (a head and no body)."""
        head = self._until(b"\r\n\r\n", deadline)
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if status < 200 or status in (204, 304) or head_only:
            return status, headers, b""
        if b"content-length" in headers:
            return status, headers, self._exactly(int(headers[b"content-length"]), deadline)
        if headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while size := int(self._until(b"\r\n", deadline), 16):
                body += self._exactly(size, deadline)
                self._exactly(2, deadline)
            self._exactly(2, deadline)
            return status, headers, body
        while not self.eof:  # close-delimited
            try:
                self._more(deadline)
            except EOFError:
                break
        body, self.data = self.data, b""
        return status, headers, body

    def closed(self, deadline: float) -> bool:
        try:
            while True:
                self._more(deadline)
        except EOFError:
            return not self.data
        except TimeoutError:
            return False


def exchange(port: int, case: Case) -> tuple[list[int], bool]:
    """-> (the statuses the client got, whether the server closed the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(case.raw)  # it may refuse the head before we sent it all
        if case.eof:
            sock.shutdown(socket.SHUT_WR)
        reader = Reader(sock)
        deadline = time.monotonic() + READ_TIMEOUT
        statuses = []
        try:
            for _ in case.statuses:
                statuses.append(reader.response(deadline)[0])
        except (EOFError, TimeoutError):
            return statuses, reader.eof
        if case.closes or case.eof:
            return statuses, reader.closed(deadline)
        sock.sendall(GET)  # still open: it must answer another request
        try:
            return statuses, reader.response(deadline)[0] != 200
        except (EOFError, TimeoutError):
            return statuses, True
