"""The helper agent's side of smart spawning: one preloader process per app, which has
loaded the app once and forks a worker on request (see `run_preloader` in the loader for
its side of the control socket)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from typing import Any

from passenger.common.startup_protocol import encode_document


class PreloaderError(RuntimeError):
    pass


class Preloader:
    def __init__(self, popen: subprocess.Popen[bytes], control: socket.socket) -> None:
        self.popen = popen
        self.control = control
        self.control.setblocking(False)
        self.lock = asyncio.Lock()  # one fork at a time on the control socket
        self.last_used = time.monotonic()
        self.unsafe = ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.returncode is None

    async def fork(self, doc: dict[str, Any], fds: list[int]) -> int:
        """Ask for one worker with these fds (lifeline, output, feedback, listening
        socket); -> its PID."""
        loop = asyncio.get_running_loop()
        async with self.lock:
            self.last_used = time.monotonic()
            try:
                socket.send_fds(self.control, [encode_document(doc)], fds)
                line = b""
                while not line.endswith(b"\n"):
                    data = await loop.sock_recv(self.control, 4096)
                    if not data:
                        raise PreloaderError("the preloader exited while forking a worker")
                    line += data
            except OSError as exc:
                raise PreloaderError(f"cannot talk to the preloader: {exc}") from None
        pid = int(json.loads(line).get("pid", 0))
        if pid <= 0:
            raise PreloaderError("the preloader could not fork a worker")
        return pid

    def stop(self) -> None:
        """Its control socket and lifeline close: it exits; SIGTERM makes sure."""
        self.control.close()
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
