"""systemd's `Type=notify` protocol (sd_notify(3)), spoken by the watchdog when systemd
set NOTIFY_SOCKET: READY=1 once serving, STATUS= one line, STOPPING=1 on shutdown, and
WATCHDOG=1 every half WATCHDOG_USEC while the helper agent answers its admin socket (so
systemd restarts a server whose helper agent hangs). Sockets of `_socket`, as in
`listeners`."""

from __future__ import annotations

import _socket
import os

from passenger.common import admin_paths
from passenger.watchdog.log import Logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from passenger.watchdog.event_loop import EventLoop, Timer

log = Logger("systemd_notify")
PING = (b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        % admin_paths.PING.encode())


class SystemdNotifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # an abstract socket
            address = "\0" + address[1:]
        self.address = address
        self.watchdog_interval = 0.0
        usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and watchdog_pid in ("", str(os.getpid())):
            self.watchdog_interval = int(usec) / 2_000_000
        self.sock: _socket.socket | None = None
        if address:
            self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        # Our children must not talk to systemd in our name.
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            os.environ.pop(name, None)
        self._next_ping: Timer | None = None
        self._ping: HelperPing | None = None

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def notify(self, *fields: str) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            log.warning(f"Cannot notify systemd at {self.address}: {exc.strerror}")

    def keep_alive(self, loop: EventLoop, admin_socket: str) -> None:
        """WATCHDOG=1 at half the interval systemd asked for, while pings succeed."""
        if self.sock is None or not self.watchdog_interval:
            return
        interval = self.watchdog_interval

        def ping() -> None:
            self._ping = HelperPing(loop, admin_socket, interval, answered)

        def answered(ok: bool) -> None:
            self._ping = None
            if ok:
                self.notify("WATCHDOG=1")
            else:
                log.warning(f"The helper agent did not answer within {interval:.1f} s; not "
                            f"telling systemd we are alive")
            self._next_ping = loop.call_later(interval, ping)

        ping()

    def stop_keep_alive(self) -> None:
        if self._next_ping is not None:
            self._next_ping.cancel()
        if self._ping is not None:
            self._ping.cancel()

    def close(self) -> None:
        self.stop_keep_alive()
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class HelperPing:
    """GET /ping.json on the helper agent's admin socket without blocking the loop:
    `done(True)` once the status line says 200, `done(False)` on anything else, or
    when `timeout` seconds pass first (a hung helper agent)."""

    def __init__(self, loop: EventLoop, admin_socket: str, timeout: float,
                 done: Callable[[bool], None]) -> None:
        self.loop = loop
        self.done: Callable[[bool], None] | None = done
        self.response = b""
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.deadline = loop.call_later(timeout, lambda: self._finish(False))
        try:
            self.sock.connect(admin_socket)
            self.sock.send(PING)  # a few bytes into an empty socket buffer
        except OSError:
            self._finish(False)
            return
        loop.add_reader(self.sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.response += data
        if not data or b"\r\n" in self.response:
            self._finish(self.response.startswith(b"HTTP/1.1 200 "))

    def _finish(self, answered: bool) -> None:
        done, self.done = self.done, None
        if done is None:
            return
        self.cancel()
        done(answered)

    def cancel(self) -> None:
        self.done = None
        self.deadline.cancel()
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
