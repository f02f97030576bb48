"""What the watchdog reads of the server configuration.

`passenger start` resolved and checked the configuration (`ServerConfig.to_json()`);
the watchdog takes the few values it acts on from that document and hands the whole
document to the helper agent, which checks it again. Not `ServerConfig` itself: its
schema (dataclasses, pathlib, ipaddress) would cost the watchdog 2 MB at run time.
"""

from __future__ import annotations

from passenger.common import standalone
from passenger.common.standalone import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class WatchdogSettings:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.app_root = self._get("app_root", str)
        self.address = self._get("address", str)
        self.port = self._get("port", int)
        self.socket = self._get("socket", str)
        self.environment = self._get("environment", str)
        self.log_file = self._get("log_file", str) or standalone.default_log_file(
            self.app_root, self.port)
        self.access_log = self._get("access_log", str)
        self.explicit_pid_file = self._get("pid_file", str)
        self.pid_file = self.explicit_pid_file or standalone.default_pid_file(
            self.app_root, self.port)
        self.daemonize = self._get("daemonize", bool)
        self.metrics_address = self._get("metrics_address", str)
        self.graceful_timeout = self._get("graceful_timeout", int)
        self.log_level = self._get("log_level", str)
        self.instance_registry_dir = self._get("instance_registry_dir", str)
        self.listen_url = standalone.listen_url(self.address, self.port, self.socket)

    def _get(self, name: str, kind: type) -> Any:
        value = self.document.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"'{name}': {value!r} is not a {kind.__name__} (the "
                              f"watchdog is started by `passenger start`)")
        return value
