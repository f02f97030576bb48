"""What a generic app (`--app-start-command`: any program serving HTTP on $PORT) needs
beside the spawner: a free port, the wait until the port accepts connections, and the
parent-death signal that takes it down if the helper agent dies."""

from __future__ import annotations

import asyncio
import ctypes
import signal
import socket
import time

from passenger.common.config import ServerConfig
from passenger.common.exit_status import describe_exit
from passenger.helper_agent.app_process import AppProcess, ProcessState
from passenger.helper_agent.spawn_error import SpawnError

GENERIC_POLL_INTERVAL = 0.05
PR_SET_PDEATHSIG = 1


async def await_port(process: AppProcess, port: int, output: list[str],
                     config: ServerConfig) -> None:
    """A generic app is up when its port accepts connections."""
    popen = process.popen
    deadline = time.monotonic() + config.start_timeout
    while not await _port_accepts(port):
        if popen.poll() is not None or process.state is not ProcessState.SPAWNING:
            raise SpawnError(f"the command exited with "
                             f"{describe_exit(popen.returncode or 0)} before it served "
                             f"HTTP on port {port}: {config.app_start_command}",
                             output)
        if time.monotonic() > deadline:
            raise SpawnError(f"the command did not serve HTTP on port {port} within "
                             f"{config.start_timeout} seconds (--start-timeout); "
                             f"process {process.pid} killed", output)
        await asyncio.sleep(GENERIC_POLL_INTERVAL)


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


def die_with_parent() -> None:
    """In the child, before exec: a generic app ignores the stdin lifeline, so the kernel
    kills it if the helper agent dies (it has its own process group, out of the
    watchdog's reach)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
