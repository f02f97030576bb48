"""Server configuration: one typed schema, Passenger's option names and defaults.

Precedence: command line > ``PASSENGER_*`` environment > ``Passengerfile.json`` in the
app root > defaults. Every invalid value fails with one line naming the option, the
value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """An option has a value we cannot use; the message is one line for the user."""


def _option(default: Any, help: str, *, minimum: int | None = None,
            maximum: int | None = None, choices: tuple[str, ...] = ()) -> Any:
    return field(default=default, metadata={
        "help": help, "minimum": minimum, "maximum": maximum, "choices": choices})


@dataclass(frozen=True)
class ServerConfig:
    """Everything `passenger start` hands to the watchdog, and the watchdog to its agents."""

    app_root: str = _option(".", "Application directory")
    address: str = _option("0.0.0.0", "Bind to the given address")
    port: int = _option(3000, "Use the given port number", minimum=1, maximum=65535)
    socket: str = _option("", "Bind to this Unix domain socket instead of TCP")
    environment: str = _option("development", "Web framework environment")
    python: str = _option(sys.executable, "Executable to use for Python apps")
    min_instances: int = _option(1, "Minimum number of processes per application",
                                 minimum=0, maximum=1000)
    max_pool_size: int = _option(6, "Maximum number of application processes",
                                 minimum=1, maximum=1000)
    start_timeout: int = _option(90, "Seconds an application process may take to start",
                                 minimum=1, maximum=86400)
    startup_file: str = _option("passenger_wsgi.py", "The WSGI file that defines `application`")
    log_file: str = _option("", "Where to write log messages (default: in the app dir)")
    access_log: str = _option("", "Where to write the access log (default: none)")
    pid_file: str = _option("", "Where to store the PID file (default: in the app dir)")
    daemonize: bool = _option(False, "Daemonize into the background")
    graceful_timeout: int = _option(30, "Seconds in-flight requests may take to finish when "
                                        "stopping", minimum=0, maximum=3600)
    log_level: str = _option("info", "Least severe log level written",
                             choices=("debug", "info", "warning", "error"))
    instance_registry_dir: str = _option("", "Directory that holds instance directories")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServerConfig:
        return parse_values(data, source=lambda name: f"'{name}'")

    @property
    def listen_url(self) -> str:
        if self.socket:
            return f"unix:{self.socket}"
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/"

    def default_log_file(self) -> str:
        """Passenger Standalone's default: `log/passenger.<port>.log` if `log/` exists."""
        return self.log_file or standalone_file(self.app_root, "log", f"passenger.{self.port}.log")

    def default_pid_file(self) -> str:
        """Passenger Standalone's default: `tmp/pids/passenger.<port>.pid` if that dir exists."""
        return self.pid_file or standalone_file(self.app_root, "tmp/pids",
                                                f"passenger.{self.port}.pid")


def standalone_file(app_root: str, preferred_dir: str, name: str) -> str:
    """`<app>/<preferred_dir>/<name>` when that directory exists, else `<app>/<name>`."""
    directory = Path(app_root) / preferred_dir
    return str(directory / name if directory.is_dir() else Path(app_root) / name)


OPTIONS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(ServerConfig)}


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return "PASSENGER_" + name.upper()


def _convert(name: str, raw: Any, where: str) -> Any:
    opt = OPTIONS[name]
    kind: type = type(opt.default)
    meta = opt.metadata
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: {raw!r} is not a boolean; allowed: true, false")
    if kind is int:
        low, high = meta["minimum"], meta["maximum"]
        allowed = f"allowed: {low}..{high}"
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise ConfigError(f"{where}: {raw!r} is not an integer; {allowed}")
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{where}: {raw!r} is not an integer; {allowed}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(f"{where}: {value} is out of range; {allowed}")
        return value
    if not isinstance(raw, str):
        raise ConfigError(f"{where}: {raw!r} is not a string")
    if meta["choices"] and raw not in meta["choices"]:
        raise ConfigError(f"{where}: {raw!r} is not allowed; allowed: {', '.join(meta['choices'])}")
    if "\0" in raw:
        raise ConfigError(f"{where}: contains a NUL byte")
    return raw


def parse_values(values: Mapping[str, Any], source: Any) -> ServerConfig:
    """Build a config from option name -> raw value; `source(name)` names the option in errors."""
    unknown = sorted(set(values) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"{source(unknown[0])}: unknown option; known: {', '.join(OPTIONS)}")
    converted = {name: _convert(name, raw, source(name)) for name, raw in values.items()}
    return _checked(ServerConfig(**converted))


def _checked(config: ServerConfig) -> ServerConfig:
    if config.min_instances > config.max_pool_size:
        raise ConfigError(
            f"--min-instances: {config.min_instances} exceeds --max-pool-size "
            f"{config.max_pool_size}; allowed: 0..{config.max_pool_size}")
    return config


def read_passengerfile(app_root: str) -> dict[str, Any]:
    path = Path(app_root) / "Passengerfile.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot be read as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a JSON object of options")
    return data


def resolve(cli: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> ServerConfig:
    """Merge the four sources in precedence order and validate the result."""
    app_root = os.path.abspath(cli.get("app_root") or environ.get(env_name("app_root")) or ".")
    if not os.path.isdir(app_root):
        raise ConfigError(f"APP_DIR: {app_root!r} is not a directory")
    file_values = read_passengerfile(app_root)
    merged: dict[str, tuple[Any, str]] = {}
    for name, raw in file_values.items():
        merged[name] = (raw, f"Passengerfile.json '{name}'")
    for name in OPTIONS:
        if env_name(name) in environ:
            merged[name] = (environ[env_name(name)], env_name(name))
    for name, raw in cli.items():
        if raw is not None:
            merged[name] = (raw, flag_name(name))
    merged["app_root"] = (app_root, "APP_DIR")
    values = {name: raw for name, (raw, _) in merged.items()}
    sources = {name: where for name, (_, where) in merged.items()}
    return parse_values(values, source=lambda name: sources.get(name, flag_name(name)))
