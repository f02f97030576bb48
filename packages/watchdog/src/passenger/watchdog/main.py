"""PassengerWatchdog entry point. `passenger start` execs us with the configuration on an
inherited pipe (`--config-fd N`); when daemonizing, it waits on `--ready-fd M` for our
one-line report (ready with the banner, or the error).

We bind the listening socket (so a restarted helper agent inherits it and clients wait in
the backlog instead of being refused), create and lock the instance directory and its
logging pipes, start the logging agent and then the helper agent, and supervise them
until SIGINT/SIGTERM. SIGUSR1 asks the logging agent to reopen its files.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import sys

from passenger.common import pid_file
from passenger.common.config import ConfigError, ServerConfig, parse_host_port
from passenger.common.executables import find_executable
from passenger.common.instance_dir import OwnedInstanceDir, UnsafePath, registry_dir
from passenger.common.log_records import LogLineHandler, LogLineWriter, create_pipe
from passenger.common.process_title import WATCHDOG, set_title
from passenger.common.startup_protocol import report_error, report_ready
from passenger.watchdog.agent_process import AgentProcess, AgentStartupError
from passenger.watchdog.supervisor import Supervisor
from passenger.watchdog.systemd_notify import SystemdNotifier

log = logging.getLogger("passenger.watchdog.main")
LOGGING_STOP_TIMEOUT = 5.0
LOG_FLUSH_INTERVAL = 1.0
HELPER_STOP_EXTRA = 10.0  # beyond --graceful-timeout, for stopping the app processes


def bind_listener(config: ServerConfig) -> socket.socket:
    if not config.socket:
        return bind_tcp(config.address, config.port, "--address", "--port")
    if os.path.exists(config.socket):
        raise ConfigError(f"--socket: {config.socket} already exists; remove it or "
                          f"choose another path")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    return _listen(sock, config.socket, "--socket", config.socket)


def bind_metrics(config: ServerConfig) -> socket.socket | None:
    """The --metrics-address listener, held like the main one across helper restarts."""
    if not config.metrics_address:
        return None
    host, port = parse_host_port(config.metrics_address)
    return bind_tcp(host, port, "--metrics-address", "--metrics-address")


def bind_tcp(host: str, port: int, host_option: str, port_option: str) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE | socket.AI_NUMERICHOST)
    except socket.gaierror:
        raise ConfigError(f"{host_option}: {host!r} is not an IP address") from None
    family, _, _, _, target = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return _listen(sock, target, port_option, f"{host}:{port}")


def _listen(sock: socket.socket, target: object, option: str, where: str) -> socket.socket:
    try:
        sock.bind(target)  # type: ignore[arg-type]
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{option}: cannot listen on {where}: {exc.strerror}") from None
    return sock


class Reporter:
    """Where the outcome of start-up goes: the terminal, or the waiting `passenger start`
    parent when daemonized."""

    def __init__(self, ready_fd: int | None) -> None:
        self.ready_fd = ready_fd

    def ready(self, banner: str) -> None:
        if self.ready_fd is None:
            print(banner, flush=True)
        else:
            report_ready(self.ready_fd, banner=banner)
            self.ready_fd = None

    def error(self, message: str) -> None:
        if self.ready_fd is None:
            print(f"*** ERROR: {message}", file=sys.stderr, flush=True)
        else:
            report_error(self.ready_fd, message)
            self.ready_fd = None


class Watchdog:
    def __init__(self, config: ServerConfig, listener: socket.socket,
                 instance: OwnedInstanceDir, reporter: Reporter,
                 log_writer: LogLineWriter, metrics: socket.socket | None = None) -> None:
        self.config = config
        self.listener = listener
        self.instance = instance
        self.reporter = reporter
        self.log_file = config.default_log_file()
        channels = [{"fifo": str(instance.logging_fifo), "file": self.log_file,
                     "echo": not config.daemonize}]
        if config.access_log:
            channels.append({"fifo": str(instance.access_fifo), "file": config.access_log})
        self.logging_agent = AgentProcess(
            "PassengerLoggingAgent", find_executable("PassengerLoggingAgent"),
            lambda: {"channels": channels})
        metrics_fd = metrics.fileno() if metrics is not None else None
        self.helper_agent = helper_agent = AgentProcess(
            "PassengerHelperAgent", find_executable("PassengerHelperAgent"),
            lambda: {"config": config.to_json(), "instance_dir": str(instance.path),
                     "listen_fd": listener.fileno(), "metrics_fd": metrics_fd},
            pass_fds=(listener.fileno(),) + ((metrics_fd,) if metrics_fd is not None else ()))
        self.supervisor = Supervisor([self.logging_agent, helper_agent])
        self.log_writer = log_writer
        self.systemd = SystemdNotifier()  # before any agent starts: they must not inherit it
        self.stop_requests = 0
        self.stop_event: asyncio.Event | None = None

    def _on_stop_signal(self, signame: str) -> None:
        self.stop_requests += 1
        if self.stop_requests == 1:
            log.info("Received %s; shutting down gracefully (again to force)", signame)
        else:
            log.warning("Received %s again; stopping at once", signame)
            self.supervisor.kill_all()
        if self.stop_event is not None:
            self.stop_event.set()

    def _on_reopen_logs(self) -> None:
        if self.logging_agent.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.logging_agent.pid, signal.SIGHUP)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_stop_signal, sig.name)
        loop.add_signal_handler(signal.SIGUSR1, self._on_reopen_logs)
        try:
            await self.supervisor.start_all()
        except AgentStartupError as exc:
            self.reporter.error(str(exc))
            await self.supervisor.stop_all({})
            return 1
        self.instance.finalize()
        self.reporter.ready(self.banner())
        summary = f"Serving {self.config.app_root} on {self.config.listen_url}"
        self.systemd.notify("READY=1", f"STATUS={summary}", f"MAINPID={os.getpid()}")
        flusher = loop.create_task(self._flush_log())
        keep_alive = loop.create_task(self.systemd.keep_alive(self.instance.admin_socket))
        await self.stop_event.wait()
        self.systemd.notify("STOPPING=1", "STATUS=Stopping: finishing requests, then "
                                          "stopping the app processes")
        keep_alive.cancel()
        flusher.cancel()
        await self.supervisor.stop_all({
            "PassengerHelperAgent": self.config.graceful_timeout + HELPER_STOP_EXTRA,
            "PassengerLoggingAgent": LOGGING_STOP_TIMEOUT})
        return 0

    async def _flush_log(self) -> None:
        """Deliver our log lines held while the logging pipe was full, and tell the
        helper agent how many we dropped (passenger-status shows it)."""
        told = (0, 0)
        while True:
            await asyncio.sleep(LOG_FLUSH_INTERVAL)
            writer = self.log_writer
            if writer.pending or writer.dropped:
                writer.flush()
            news = (writer.dropped_total, self.helper_agent.pid)
            if writer.dropped_total and news != told and self.helper_agent.tell(
                    {"watchdog_log_lines_dropped": writer.dropped_total}):
                told = news

    def stop_command(self) -> str:
        """One that works as printed, from any directory."""
        if self.config.pid_file:
            return f"passenger stop --pid-file {shlex.quote(self.config.default_pid_file())}"
        return f"passenger stop {shlex.quote(self.config.app_root)} --port {self.config.port}"

    def banner(self) -> str:
        return "\n".join([
            "=============== Passenger Standalone web server started ===============",
            f"PID file: {self.config.default_pid_file()}",
            f"Log file: {self.log_file}",
            f"Environment: {self.config.environment}",
            f"Accessible via: {self.config.listen_url}",
            f"Instance: {self.instance.name} ({self.instance.path})",
            "",
            f"Serving in the background as a daemon.\nShutdown with: {self.stop_command()}"
            if self.config.daemonize else
            "You can stop Passenger Standalone by pressing Ctrl-C.",
            "=======================================================================",
        ])


def main() -> None:
    parser = argparse.ArgumentParser(prog="PassengerWatchdog",
                                     description="Started by `passenger start`.")
    parser.add_argument("--config-fd", type=int, required=True)
    parser.add_argument("--ready-fd", type=int)
    args = parser.parse_args()
    set_title(WATCHDOG)
    reporter = Reporter(args.ready_fd)
    with os.fdopen(args.config_fd, "rb") as f:
        doc = json.loads(f.read())
    pid_path = ""
    try:
        config = ServerConfig.from_json(doc["config"])
        pid_path = config.default_pid_file()
        pid_file.claim(pid_path)
        metrics = bind_metrics(config)  # first: a failure leaves no --socket file behind
        listener = bind_listener(config)
    except (ConfigError, pid_file.PidFileError) as exc:
        if pid_path:
            pid_file.release(pid_path)
        reporter.error(str(exc))
        sys.exit(1)
    try:
        instance = OwnedInstanceDir.create(registry_dir(config.instance_registry_dir), {
            "listen": config.listen_url, "app_roots": [config.app_root],
            "pid_file": pid_path})
    except (UnsafePath, OSError) as exc:
        listener.close()
        pid_file.release(pid_path)
        reporter.error(str(exc))
        sys.exit(1)
    keepers = [create_pipe(str(instance.logging_fifo)), create_pipe(str(instance.access_fifo))]
    writer = LogLineWriter(str(instance.logging_fifo), name="main log")
    logging.getLogger().handlers[:] = [LogLineHandler(writer)]
    logging.getLogger().setLevel(config.log_level.upper())
    loop = asyncio.new_event_loop()
    try:
        code = loop.run_until_complete(Watchdog(config, listener, instance, reporter,
                                                        writer, metrics).run())
    finally:
        with contextlib.suppress(Exception):
            writer.close()
        for fd in keepers:
            os.close(fd)
        instance.close_and_remove()
        pid_file.release(pid_path)
        if config.socket:
            with contextlib.suppress(OSError):
                os.unlink(config.socket)
        loop.close()
    sys.exit(code)


if __name__ == "__main__":
    main()
