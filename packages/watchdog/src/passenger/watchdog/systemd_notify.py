"""systemd's `Type=notify` protocol (sd_notify(3)), spoken by the watchdog when systemd
set NOTIFY_SOCKET: READY=1 once serving, STATUS= one line, STOPPING=1 on shutdown, and
WATCHDOG=1 every half WATCHDOG_USEC while the helper agent answers its admin socket (so
systemd restarts a server whose helper agent hangs)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path

log = logging.getLogger(__name__)
PING = b"GET /ping.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


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
        self.sock: socket.socket | None = None
        if address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # Our children must not talk to systemd in our name.
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            os.environ.pop(name, None)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def notify(self, *fields: str) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            log.warning("Cannot notify systemd at %s: %s", self.address, exc.strerror)

    async def keep_alive(self, admin_socket: Path) -> None:
        """WATCHDOG=1 at half the interval systemd asked for, while pings succeed."""
        if self.sock is None or not self.watchdog_interval:
            return
        while True:
            try:
                async with asyncio.timeout(self.watchdog_interval):
                    answered = await helper_answers(admin_socket)
            except TimeoutError:
                answered = False
            if answered:
                self.notify("WATCHDOG=1")
            else:
                log.warning("The helper agent did not answer within %.1f s; not telling "
                            "systemd we are alive", self.watchdog_interval)
            await asyncio.sleep(self.watchdog_interval)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


async def helper_answers(admin_socket: Path) -> bool:
    writer = None
    try:
        reader, writer = await asyncio.open_unix_connection(str(admin_socket))
        writer.write(PING)
        status_line = await reader.readline()
        return status_line.startswith(b"HTTP/1.1 200 ")
    except OSError:
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
