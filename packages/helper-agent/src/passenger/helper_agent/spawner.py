"""Starting app processes the direct way: a fresh interpreter running `wsgi_loader.py`.

The child gets its startup document on stdin (kept open as its lifeline), reports ready
or a load error on a feedback pipe, and writes its stdout and stderr to one pipe whose
lines we forward to the logging agent as `App <pid> output: ...`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import subprocess
import time
from pathlib import Path
from typing import Protocol

from passenger.common import app_protocol
from passenger.common.config import ServerConfig
from passenger.common.log_records import LogLineWriter, app_output_line
from passenger.common.process_title import WSGI_APP_PREFIX
from passenger.common.startup_protocol import (
    encode_document,
    parse_feedback,
    read_feedback_line,
)
from passenger.helper_agent import wsgi_loader
from passenger.helper_agent.app_channel import AppChannel, Channel
from passenger.helper_agent.app_process import AppProcess, ProcessState, describe_exit
from passenger.helper_agent.http_app_channel import HttpAppChannel

log = logging.getLogger(__name__)
MAX_OUTPUT_KEPT = 50
GENERIC_POLL_INTERVAL = 0.05


class SpawnError(RuntimeError):
    def __init__(self, message: str, output: list[str]) -> None:
        super().__init__(message)
        self.output = output


class ProcessOwner(Protocol):
    """The group: told when one of its processes exits, ends a response or loses its
    connection."""

    def on_process_exit(self, process: AppProcess) -> None: ...
    def on_session_closed(self, process: AppProcess, channel: Channel) -> None: ...
    def on_channel_lost(self, process: AppProcess) -> None: ...


class Spawner:
    def __init__(self, config: ServerConfig, apps_dir: Path, log_writer: LogLineWriter,
                 owner: ProcessOwner) -> None:
        self.config = config
        self.apps_dir = apps_dir
        self.log_writer = log_writer
        self.owner = owner

    def forget_loaded_code(self) -> None:
        """After a restart new processes must load the app's code afresh."""

    def app_environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(PASSENGER_APP_ENV=self.config.environment, WSGI_ENV=self.config.environment,
                   PYTHONUNBUFFERED="1", IN_PASSENGER="1")
        return env

    async def spawn(self) -> AppProcess:
        if self.config.app_start_command:
            return await self._spawn_generic()
        return await self._spawn_direct()

    async def _spawn_generic(self) -> AppProcess:
        """Any program that serves HTTP on $PORT: up when the port accepts connections."""
        port = free_port()
        output_r, output_w = os.pipe()
        env = {**self.app_environment(), "PORT": str(port)}
        try:
            popen = subprocess.Popen(  # noqa: ASYNC220 (fork+exec is quick; we reap via pidfd)
                ["/bin/sh", "-c", self.config.app_start_command], stdin=subprocess.PIPE,
                stdout=output_w, stderr=output_w, cwd=self.config.app_root, env=env,
                process_group=0)
        except OSError as exc:
            os.close(output_r)
            raise SpawnError(f"cannot run /bin/sh: {exc}", []) from None
        finally:
            os.close(output_w)
        process = AppProcess(popen=popen, socket_path=f"127.0.0.1:{port}",
                             own_process_group=True)
        output: list[str] = []
        self._forward_output(process, output_r, output)
        self._watch_exit(process)
        deadline = time.monotonic() + self.config.start_timeout
        while not await _port_accepts(port):
            if popen.poll() is not None or process.state is not ProcessState.SPAWNING:
                raise SpawnError(f"the command exited with "
                                 f"{describe_exit(popen.returncode or 0)} before it served "
                                 f"HTTP on port {port}: {self.config.app_start_command}",
                                 output)
            if time.monotonic() > deadline:
                process.kill()
                raise SpawnError(f"the command did not serve HTTP on port {port} within "
                                 f"{self.config.start_timeout} seconds (--start-timeout); "
                                 f"process {process.pid} killed", output)
            await asyncio.sleep(GENERIC_POLL_INTERVAL)
        for _ in range(self.config.concurrency):
            process.channels.append(HttpAppChannel(
                port, on_response_end=lambda ch: self.owner.on_session_closed(process, ch),
                on_lost=lambda: self.owner.on_channel_lost(process)))
        process.concurrency = self.config.concurrency
        return process

    async def _spawn_direct(self) -> AppProcess:
        loop = asyncio.get_running_loop()
        title = WSGI_APP_PREFIX + self.config.app_root
        socket_path = str(self.apps_dir / f"wsgi.{secrets.token_hex(8)}")
        argv = [self.config.python, wsgi_loader.__file__]
        area = sum(len(a.encode()) + 1 for a in argv)
        if area <= len(title.encode()):
            argv.append(" " * (len(title.encode()) - area + 1))  # room for the title
        feedback_r, feedback_w = os.pipe()
        output_r, output_w = os.pipe()
        try:
            popen = subprocess.Popen(  # noqa: ASYNC220 (fork+exec is quick; we reap via pidfd)
                argv, stdin=subprocess.PIPE, stdout=output_w, stderr=output_w,
                pass_fds=(feedback_w,), cwd=self.config.app_root,
                env=self.app_environment())
        except OSError as exc:
            os.close(feedback_r)
            os.close(output_r)
            raise SpawnError(f"cannot start {self.config.python}: {exc}", []) from None
        finally:
            os.close(feedback_w)
            os.close(output_w)
        process = AppProcess(popen=popen, socket_path=socket_path)
        output: list[str] = []
        self._forward_output(process, output_r, output)
        self._watch_exit(process)
        assert popen.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it died at once: the feedback says so
            popen.stdin.write(encode_document({
                "title": title, "feedback_fd": feedback_w, "socket_path": socket_path,
                "app_root": self.config.app_root, "startup_file": self.config.startup_file,
                "protocol_path": app_protocol.__file__,
                "concurrency": self.config.concurrency}))
            popen.stdin.flush()
        try:
            feedback = await asyncio.wait_for(read_feedback_line(feedback_r),
                                              self.config.start_timeout)
        except TimeoutError:
            process.kill()
            raise SpawnError(f"the application did not start within "
                             f"{self.config.start_timeout} seconds (--start-timeout); "
                             f"process {process.pid} killed", output) from None
        message = parse_feedback(feedback)
        if message["status"] != "ready":
            process.kill()
            raise SpawnError(str(message.get("message")), output)
        try:
            for _ in range(self.config.concurrency):
                _, channel = await loop.create_unix_connection(
                    lambda: AppChannel(
                        on_response_end=lambda ch: self.owner.on_session_closed(process, ch),
                        on_lost=lambda: self.owner.on_channel_lost(process)),
                    socket_path)
                process.channels.append(channel)
        except OSError as exc:
            process.kill()
            raise SpawnError(f"cannot connect to the app process's socket: {exc}",
                             output) from None
        process.concurrency = self.config.concurrency
        return process

    def _forward_output(self, process: AppProcess, fd: int, kept: list[str]) -> None:
        loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        pending = bytearray()

        def readable() -> None:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            pending.extend(data)
            lines = pending.split(b"\n")
            if data:
                pending[:] = lines.pop()
            else:
                loop.remove_reader(fd)
                os.close(fd)
                pending.clear()
                lines = [line for line in lines if line]
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                self.log_writer.write(app_output_line(process.pid, line))
                if process.state is ProcessState.SPAWNING:
                    kept.append(line)
                    del kept[:-MAX_OUTPUT_KEPT]

        loop.add_reader(fd, readable)

    def _watch_exit(self, process: AppProcess) -> None:
        """A pidfd becomes readable the moment the process exits: no polling."""
        loop = asyncio.get_running_loop()
        pidfd = os.pidfd_open(process.pid)

        def exited() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            returncode = process.popen.poll()
            process.exit_description = describe_exit(returncode if returncode is not None
                                                     else 0)
            self.owner.on_process_exit(process)

        loop.add_reader(pidfd, exited)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _port_accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True
