"""Passenger Standalone's conventions that need no schema: where the log and PID files
go, the URL we listen on, HOST:PORT. Shared by `config` and by the watchdog, which takes
the configuration as `passenger start` resolved and checked it, and stays small: nothing
here imports dataclasses, pathlib or ipaddress.
"""

from __future__ import annotations

import os


class ConfigError(ValueError):
    """An option has a value we cannot use; the message is one line for the user."""


def listen_url(address: str, port: int, socket_path: str = "") -> str:
    if socket_path:
        return f"unix:{socket_path}"
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}/"


def standalone_file(app_root: str, preferred_dir: str, name: str) -> str:
    """`<app>/<preferred_dir>/<name>` when that directory exists, else `<app>/<name>`."""
    directory = os.path.join(app_root, preferred_dir)
    return os.path.join(directory if os.path.isdir(directory) else app_root, name)


def default_log_file(app_root: str, port: int) -> str:
    """Passenger Standalone's default: `log/passenger.<port>.log` if `log/` exists."""
    return standalone_file(app_root, "log", f"passenger.{port}.log")


def default_pid_file(app_root: str, port: int) -> str:
    """Passenger Standalone's default: `tmp/pids/passenger.<port>.pid` if that dir exists."""
    return standalone_file(app_root, "tmp/pids", f"passenger.{port}.pid")


HOST_PORT_ALLOWED = "allowed: HOST:PORT, [IPv6]:PORT or :PORT"


def split_host_port(spec: str, option: str = "--metrics-address") -> tuple[str, int]:
    """`127.0.0.1:9090`, `[::1]:9090` or `:9090` (all addresses) -> (host, port); the
    host is not checked here (see config.parse_host_port)."""
    host, sep, port_text = spec.rpartition(":")
    if not sep or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"{option}: {spec!r} is not HOST:PORT with a port 1..65535; "
                          f"{HOST_PORT_ALLOWED}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "0.0.0.0", int(port_text)
