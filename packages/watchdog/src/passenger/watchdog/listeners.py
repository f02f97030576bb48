"""The listening sockets, bound by the watchdog and held for its lifetime: each helper
agent it starts inherits them, so a restarted helper agent takes over the same backlog
and clients wait there instead of being refused.

`_socket` is the C socket type that the `socket` module wraps with enums and helpers the
watchdog does not use, for 0.3 MB of its memory.
"""

from __future__ import annotations

import _socket
import os

from passenger.common.standalone import ConfigError, split_host_port

TYPE_CHECKING = False
if TYPE_CHECKING:
    from passenger.watchdog.settings import WatchdogSettings


def bind_listener(settings: WatchdogSettings) -> _socket.socket:
    """--address/--port, or --socket."""
    if not settings.socket:
        return bind_tcp(settings.address, settings.port, "--address", "--port")
    if os.path.exists(settings.socket):
        raise ConfigError(f"--socket: {settings.socket} already exists; remove it or "
                          f"choose another path")
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    return _listen(sock, settings.socket, "--socket", settings.socket)


def bind_metrics(settings: WatchdogSettings) -> _socket.socket | None:
    """The --metrics-address listener, held like the main one across helper restarts."""
    if not settings.metrics_address:
        return None
    host, port = split_host_port(settings.metrics_address)
    return bind_tcp(host, port, "--metrics-address", "--metrics-address")


def bind_tcp(host: str, port: int, host_option: str, port_option: str) -> _socket.socket:
    try:
        # As bytes: a str would go through the IDNA codec (0.26 MB) to be a number.
        infos = _socket.getaddrinfo(host.encode("ascii"), port, type=_socket.SOCK_STREAM,
                                    flags=_socket.AI_PASSIVE | _socket.AI_NUMERICHOST)
    except (_socket.gaierror, UnicodeEncodeError):
        raise ConfigError(f"{host_option}: {host!r} is not an IP address") from None
    family, _, _, _, target = infos[0]
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    return _listen(sock, target, port_option, f"{host}:{port}")


def _listen(sock: _socket.socket, target: object, option: str, where: str) -> _socket.socket:
    try:
        sock.bind(target)  # type: ignore[arg-type]
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{option}: cannot listen on {where}: {exc.strerror}") from None
    return sock
