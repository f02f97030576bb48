"""Starting an app's processes, in one of three ways: `direct` (a fresh interpreter
running `wsgi_loader.py`), `smart` (a fork of the app's preloader, which loaded the app
once) or generic (any command serving HTTP on $PORT, with --app-start-command).

A WSGI child gets its startup document on stdin (kept open as its lifeline) and reports
ready or a load error on a feedback pipe; its output goes to `AppOutput`, its exit to
the helper agent's one `ChildWatcher`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any, Protocol

from passenger.common import SERVER_SOFTWARE, app_protocol
from passenger.common.child_watcher import ChildWatcher
from passenger.common.config import ServerConfig
from passenger.common.exit_status import describe_exit
from passenger.common.log_records import LogLineWriter
from passenger.common.process_title import PRELOADER_PREFIX, WSGI_APP_PREFIX
from passenger.common.startup_protocol import (
    encode_document,
    parse_feedback,
    read_feedback_line,
)
from passenger.helper_agent import generic_app, wsgi_handler, wsgi_loader
from passenger.helper_agent.app_channel import AppChannel, Channel
from passenger.helper_agent.app_launch import AppLaunch
from passenger.helper_agent.app_output import AppOutput
from passenger.helper_agent.app_process import (
    AdoptedProcess,
    AppProcess,
    ChildProcess,
    ProcessState,
)
from passenger.helper_agent.http_app_channel import HttpAppChannel
from passenger.helper_agent.preloader import Preloader, PreloaderError
from passenger.helper_agent.spawn_error import SpawnError

log = logging.getLogger(__name__)


# What the app's interpreter runs (`python -c`): the loader's source comes in the startup
# document, so the app's user needs to read nothing of ours and nothing in the instance
# directory. Tracebacks still name the loader's real path.
LOADER_BOOTSTRAP = (
    "import json,sys\n"
    "d=json.loads(sys.stdin.buffer.readline())\n"
    "g={'__name__':'__main__','__file__':d['loader_path'],'STARTUP_DOCUMENT':d}\n"
    "exec(compile(d['loader_source'],d['loader_path'],'exec'),g)\n")
_SOURCES: dict[str, str] = {}


def loader_sources() -> dict[str, str]:
    """The loader's, the request handler's and the frame module's source and path,
    read once."""
    if not _SOURCES:
        for key, module in (("loader", wsgi_loader), ("protocol", app_protocol),
                            ("handler", wsgi_handler)):
            path = str(module.__file__)
            _SOURCES[f"{key}_path"] = path
            with open(path, encoding="utf-8") as f:
                _SOURCES[f"{key}_source"] = f.read()
    return dict(_SOURCES)


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class ProcessOwner(Protocol):
    """The group: told when one of its processes exits, ends a response or loses its
    connection."""

    def on_process_exit(self, process: AppProcess) -> None: ...
    def on_session_closed(self, process: AppProcess, channel: Channel) -> None: ...
    def on_channel_lost(self, process: AppProcess) -> None: ...


BACKTRACE_TIMEOUT = 3.0  # a process busy in C code that never returns cannot answer


class Spawner:
    def __init__(self, config: ServerConfig, apps_dir: str, log_writer: LogLineWriter,
                 owner: ProcessOwner, children: ChildWatcher) -> None:
        self.config = config
        self.apps_dir = apps_dir
        self.output = AppOutput(log_writer)
        self.children = children
        self.owner = owner
        self.preloader: Preloader | None = None
        self.warned_unsafe = False
        self.launch = AppLaunch(config)
        self.user = self.launch.user

    def preflight(self) -> str:
        return self.launch.preflight()

    def forget_loaded_code(self) -> None:
        """After a restart new processes must load the app's code afresh."""
        self.stop_preloader("the app is restarting")
        self.warned_unsafe = False

    async def backtraces(self, process: AppProcess) -> str:
        """Every thread's stack in a WSGI process (the loader dumps them on SIGQUIT)."""
        if self.config.app_start_command:
            raise ValueError("a generic app (--app-start-command) cannot dump its stacks")
        capture = self.output.expect_backtraces(process.pid)
        process.kill(signal.SIGQUIT)
        try:
            return await asyncio.wait_for(capture.done, BACKTRACE_TIMEOUT)
        finally:
            self.output.backtraces_taken(process.pid, capture)

    async def spawn(self) -> AppProcess:
        if self.config.app_start_command:
            return await self._spawn_generic()
        if self.config.spawn_method == "smart":
            preloader = await self._running_preloader()
            if not preloader.unsafe:
                return await self._spawn_smart()
            if not self.warned_unsafe:
                self.warned_unsafe = True
                log.warning("%s cannot be preloaded safely (%s); spawning its processes "
                            "directly", self.config.app_root, preloader.unsafe)
            self.stop_preloader("not used: the app cannot be preloaded safely")
        return await self._spawn_direct()

    async def _spawn_generic(self) -> AppProcess:
        """Any program that serves HTTP on $PORT: up when the port accepts connections."""
        port = generic_app.free_port()
        output_r, output_w = os.pipe()
        env = {**self.launch.environment(), "PORT": str(port)}
        try:
            popen = subprocess.Popen(  # noqa: ASYNC220 (fork+exec is quick; we reap via pidfd)
                ["/bin/sh", "-c", self.config.app_start_command], stdin=subprocess.PIPE,
                stdout=output_w, stderr=output_w, cwd=self.config.app_root, env=env,
                process_group=0, preexec_fn=generic_app.die_with_parent, **self.launch.popen_user())
        except OSError as exc:
            os.close(output_r)
            raise self.launch.start_error(exc) from None
        finally:
            os.close(output_w)
        process = AppProcess(popen=popen, socket_path=f"127.0.0.1:{port}",
                             own_process_group=True)
        output: list[str] = []
        self.output.forward(process.pid, output_r, output,
                             keeping=lambda: process.state is ProcessState.SPAWNING)
        self._adopt(process)
        try:
            await generic_app.await_port(process, port, output, self.config)
        except BaseException:  # a spawn error, or cancelled because we are stopping
            process.kill()
            raise
        for _ in range(self.config.concurrency):
            process.channels.append(HttpAppChannel(
                port, on_response_end=lambda ch: self.owner.on_session_closed(process, ch),
                on_lost=lambda: self.owner.on_channel_lost(process)))
        process.concurrency = self.config.concurrency
        return process

    async def _spawn_direct(self) -> AppProcess:
        """A fresh interpreter running the loader."""
        listener, socket_path = self._app_socket()
        try:
            popen, feedback_r, output = self._start_loader(
                {"listen_fd": listener.fileno()}, pass_fds=(listener,))
        except SpawnError:
            _unlink(socket_path)
            raise
        finally:
            listener.close()  # the app process has its own copy
        process = AppProcess(popen=popen, socket_path=socket_path)
        self._adopt(process)
        return await self._finish_spawn(process, feedback_r, output)

    async def _spawn_smart(self) -> AppProcess:
        """A fork of the preloader, which has the app loaded already."""
        preloader = await self._running_preloader()
        listener, socket_path = self._app_socket()
        lifeline_r, lifeline_w = os.pipe()
        output_r, output_w = os.pipe()
        feedback_r, feedback_w = os.pipe()
        try:
            pid = await preloader.fork(
                {"title": WSGI_APP_PREFIX + self.config.app_root,
                 "app_root": self.config.app_root, "server_software": SERVER_SOFTWARE,
                 "concurrency": self.config.concurrency},
                [lifeline_r, output_w, feedback_w, listener.fileno()])
        except PreloaderError as exc:
            for fd in (lifeline_w, output_r, feedback_r):
                os.close(fd)
            _unlink(socket_path)
            raise SpawnError(str(exc), []) from None
        finally:
            for fd in (lifeline_r, output_w, feedback_w):
                os.close(fd)
            listener.close()
        popen = AdoptedProcess(pid, os.fdopen(lifeline_w, "wb"))
        output: list[str] = []
        process = AppProcess(popen=popen, socket_path=socket_path)
        self.output.forward(pid, output_r, output,
                             keeping=lambda: process.state is ProcessState.SPAWNING)
        self._adopt(process)
        return await self._finish_spawn(process, feedback_r, output)

    async def _running_preloader(self) -> Preloader:
        if self.preloader is not None and self.preloader.alive:
            return self.preloader
        control, theirs = socket.socketpair()
        try:
            popen, feedback_r, output = self._start_loader(
                {"mode": "preloader", "control_fd": theirs.fileno()}, pass_fds=(theirs,),
                title=PRELOADER_PREFIX + self.config.app_root)
        except SpawnError:
            control.close()
            raise
        finally:
            theirs.close()
        preloader = Preloader(popen, control)
        self._watch(popen, lambda: self._preloader_exited(preloader))
        message = await self._await_feedback(feedback_r, output, popen.pid,
                                             lambda: preloader.stop())
        preloader.unsafe = str(message.get("unsafe") or "")
        log.info("Preloader %d for %s is ready", popen.pid, self.config.app_root)
        self.preloader = preloader
        return preloader

    def _preloader_exited(self, preloader: Preloader) -> None:
        if self.preloader is preloader:
            self.preloader = None
            log.info("Preloader %d for %s exited with %s", preloader.pid,
                     self.config.app_root, describe_exit(preloader.popen.returncode or 0))

    def stop_preloader(self, reason: str) -> None:
        if self.preloader is not None:
            log.info("Stopping preloader %d for %s: %s", self.preloader.pid,
                     self.config.app_root, reason)
            self.preloader.stop()
            self.preloader = None

    def stop_idle_preloader(self) -> None:
        idle_time = self.config.max_preloader_idle_time
        if (self.preloader is not None and idle_time
                and time.monotonic() - self.preloader.last_used > idle_time):
            self.stop_preloader(f"unused for {idle_time} s (--max-preloader-idle-time)")

    def _app_socket(self) -> tuple[socket.socket, str]:
        """An app process's listening socket, bound and listening by us with mode 0600 in
        our 0700 `apps/`, then handed to the process: its umask cannot widen it, and no
        one but the helper agent can reach it."""
        path = os.path.join(self.apps_dir, f"wsgi.{secrets.token_hex(8)}")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            os.chmod(path, 0o600)
            listener.listen(64)
        except OSError as exc:
            listener.close()
            _unlink(path)
            raise SpawnError(f"cannot create the app process's socket {path}: {exc}",
                             []) from None
        return listener, path

    def _start_loader(self, extra: dict[str, Any], pass_fds: tuple[socket.socket, ...] = (),
                      title: str = "") -> tuple[subprocess.Popen[bytes], int, list[str]]:
        """Run the loader with the app's interpreter; -> (process, feedback fd, output)."""
        title = title or WSGI_APP_PREFIX + self.config.app_root
        argv = [self.config.python, "-c", LOADER_BOOTSTRAP]
        longest = max(len(title.encode()), len((WSGI_APP_PREFIX + self.config.app_root).encode()))
        area = sum(len(a.encode()) + 1 for a in argv)
        if area <= longest:
            argv.append(" " * (longest - area + 1))  # room for the title
        feedback_r, feedback_w = os.pipe()
        output_r, output_w = os.pipe()
        try:
            popen = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=output_w, stderr=output_w,
                pass_fds=(feedback_w, *(s.fileno() for s in pass_fds)),
                cwd=self.config.app_root, env=self.launch.environment(), **self.launch.popen_user())
        except OSError as exc:
            os.close(feedback_r)
            os.close(output_r)
            raise self.launch.start_error(exc) from None
        finally:
            os.close(feedback_w)
            os.close(output_w)
        output: list[str] = []
        starting = [True]
        self.output.forward(popen.pid, output_r, output, keeping=lambda: starting[0])
        assert popen.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it died at once: the feedback says so
            popen.stdin.write(encode_document({
                "title": title, "feedback_fd": feedback_w,
                "app_root": self.config.app_root, "startup_file": self.config.startup_file,
                **loader_sources(), "server_software": SERVER_SOFTWARE,
                "concurrency": self.config.concurrency, **extra}))
            popen.stdin.flush()
        return popen, feedback_r, output

    async def _await_feedback(self, feedback_r: int, output: list[str], pid: int,
                              kill: Callable[[], None]) -> dict[str, Any]:
        try:
            feedback = await asyncio.wait_for(read_feedback_line(feedback_r),
                                              self.config.start_timeout)
        except TimeoutError:
            kill()
            raise SpawnError(f"the application did not start within "
                             f"{self.config.start_timeout} seconds (--start-timeout); "
                             f"process {pid} killed", output) from None
        message = parse_feedback(feedback)
        if message["status"] != "ready":
            kill()
            raise SpawnError(str(message.get("message")), output)
        return message

    def _adopt(self, process: AppProcess) -> None:
        """Watch the process's exit."""
        self._watch(process.popen, lambda: self._process_exited(process))

    def _watch(self, child: ChildProcess, on_exit: Callable[[], None]) -> None:
        def exited(code: int | None) -> None:
            if code is not None:
                child.returncode = code
            on_exit()
        self.children.watch(child.pid, exited)

    def _process_exited(self, process: AppProcess) -> None:
        if process.socket_path.startswith("/"):
            _unlink(process.socket_path)
        returncode = process.popen.returncode
        process.exit_description = (describe_exit(returncode) if returncode is not None
                                    else "an unknown status")
        self.owner.on_process_exit(process)

    async def _finish_spawn(self, process: AppProcess, feedback_r: int,
                            output: list[str]) -> AppProcess:
        await self._await_feedback(feedback_r, output, process.pid, process.kill)
        try:
            for _ in range(self.config.concurrency):
                process.channels.append(await self.open_channel(process))
        except OSError as exc:
            process.kill()
            raise SpawnError(f"cannot connect to the app process's socket: {exc}",
                             output) from None
        process.concurrency = self.config.concurrency
        return process

    async def open_channel(self, process: AppProcess) -> AppChannel:
        """One persistent connection to the app process (it has one per request slot)."""
        _, channel = await asyncio.get_running_loop().create_unix_connection(
            lambda: AppChannel(
                on_response_end=lambda ch: self.owner.on_session_closed(process, ch),
                on_lost=lambda: self.owner.on_channel_lost(process)),
            process.socket_path)
        return channel
