"""PassengerWatchdog entry point. `passenger start` execs us with the configuration on an
inherited pipe (`--config-fd N`).

We bind the listening socket (so a restarted helper agent inherits it and clients wait in
the backlog instead of being refused), create and lock the instance directory, start the
logging agent and then the helper agent, and supervise them until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys

from passenger.common.config import ConfigError, ServerConfig
from passenger.common.executables import find_executable
from passenger.common.instance_dir import OwnedInstanceDir, registry_dir
from passenger.common.log_records import FifoLogHandler, FifoLogWriter
from passenger.common.process_title import WATCHDOG, set_title
from passenger.watchdog.agent_process import AgentProcess, AgentStartupError
from passenger.watchdog.supervisor import Supervisor

log = logging.getLogger("passenger.watchdog.main")
HELPER_STOP_TIMEOUT = 40.0
LOGGING_STOP_TIMEOUT = 5.0


def bind_listener(config: ServerConfig) -> socket.socket:
    if config.socket:
        if os.path.exists(config.socket):
            raise ConfigError(f"--socket: {config.socket} already exists; remove it or "
                              f"choose another path")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: object = config.socket
    else:
        try:
            infos = socket.getaddrinfo(config.address, config.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE | socket.AI_NUMERICHOST)
        except socket.gaierror:
            raise ConfigError(f"--address: {config.address!r} is not an IP address") from None
        family, _, _, _, target = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(target)  # type: ignore[arg-type]
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        where = config.socket or f"{config.address}:{config.port}"
        option = "--socket" if config.socket else "--port"
        raise ConfigError(f"{option}: cannot listen on {where}: {exc.strerror}") from None
    return sock


class Watchdog:
    def __init__(self, config: ServerConfig, listener: socket.socket,
                 instance: OwnedInstanceDir, foreground: bool) -> None:
        self.config = config
        self.listener = listener
        self.instance = instance
        self.foreground = foreground
        self.log_file = config.default_log_file()
        logging_agent = AgentProcess(
            "PassengerLoggingAgent", find_executable("PassengerLoggingAgent"),
            lambda: {"fifo": str(instance.logging_fifo), "log_file": self.log_file,
                     "echo_to_terminal": foreground})
        helper_agent = AgentProcess(
            "PassengerHelperAgent", find_executable("PassengerHelperAgent"),
            lambda: {"config": config.to_json(), "instance_dir": str(instance.path),
                     "listen_fd": listener.fileno()},
            pass_fds=(listener.fileno(),))
        self.supervisor = Supervisor([logging_agent, helper_agent], on_fatal=self._on_fatal)
        self.fatal_error = ""
        self.stop_requests = 0
        self.stop_event: asyncio.Event | None = None

    def _on_signal(self, signame: str) -> None:
        self.stop_requests += 1
        if self.stop_requests == 1:
            log.info("Received %s; shutting down gracefully (again to force)", signame)
        else:
            self.supervisor.kill_all()
        if self.stop_event is not None:
            self.stop_event.set()

    def _on_fatal(self, message: str) -> None:
        self.fatal_error = message
        if self.stop_event is not None:
            self.stop_event.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig.name)
        try:
            await self.supervisor.start_all()
        except AgentStartupError as exc:
            print(f"*** ERROR: {exc}", file=sys.stderr)
            await self.supervisor.stop_all({})
            return 1
        self.instance.finalize()
        self.print_banner()
        await self.stop_event.wait()
        if self.fatal_error:
            print(f"*** ERROR: {self.fatal_error}; stopping", file=sys.stderr)
        await self.supervisor.stop_all({"PassengerHelperAgent": HELPER_STOP_TIMEOUT,
                                        "PassengerLoggingAgent": LOGGING_STOP_TIMEOUT})
        return 1 if self.fatal_error else 0

    def print_banner(self) -> None:
        lines = [
            "=============== Passenger Standalone web server started ===============",
            f"Log file: {self.log_file}",
            f"Environment: {self.config.environment}",
            f"Accessible via: {self.config.listen_url}",
            f"Instance: {self.instance.name} ({self.instance.path})",
            "",
            "You can stop Passenger Standalone by pressing Ctrl-C."
            if self.foreground else "Stop it with `passenger stop`.",
            "=======================================================================",
        ]
        print("\n".join(lines), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="PassengerWatchdog",
                                     description="Started by `passenger start`.")
    parser.add_argument("--config-fd", type=int, required=True)
    args = parser.parse_args()
    set_title(WATCHDOG)
    with os.fdopen(args.config_fd, "rb") as f:
        doc = json.loads(f.read())
    try:
        config = ServerConfig.from_json(doc["config"])
        listener = bind_listener(config)
    except ConfigError as exc:
        print(f"*** ERROR: {exc}", file=sys.stderr)
        sys.exit(1)
    instance = OwnedInstanceDir.create(registry_dir(config.instance_registry_dir), {
        "listen": config.listen_url, "app_roots": [config.app_root]})
    writer = FifoLogWriter(str(instance.logging_fifo))
    logging.getLogger().handlers[:] = [FifoLogHandler(writer)]
    logging.getLogger().setLevel(config.log_level.upper())
    loop = asyncio.new_event_loop()
    try:
        code = loop.run_until_complete(
            Watchdog(config, listener, instance, foreground=True).run())
    finally:
        with contextlib.suppress(Exception):
            writer.close()
        instance.close_and_remove()
        if config.socket:
            with contextlib.suppress(OSError):
                os.unlink(config.socket)
        loop.close()
    sys.exit(code)


if __name__ == "__main__":
    main()
