"""Server configuration: one typed schema, Passenger's option names and defaults.

Precedence: command line > ``PASSENGER_*`` environment > ``Passengerfile.json`` in the
app root > defaults. Every invalid value fails with one line naming the option, the
value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import pwd
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from passenger.common import standalone
from passenger.common.standalone import ConfigError, split_host_port, standalone_file

__all__ = ["OPTIONS", "AppRoute", "ConfigError", "ServerConfig", "env_name", "flag_name",
           "parse_allow_ips", "parse_app_flag", "parse_host_port", "parse_values",
           "standalone_file"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _option(default: Any, help: str, *, minimum: int | None = None,
            maximum: int | None = None, choices: tuple[str, ...] = (),
            per_app: bool = False) -> Any:
    """`per_app`: may be set for one app of several (in `apps`)."""
    return field(default=default, metadata={
        "help": help, "minimum": minimum, "maximum": maximum, "choices": choices,
        "per_app": per_app})


@dataclass(frozen=True)
class ServerConfig:
    """Everything `passenger start` hands to the watchdog, and the watchdog to its agents."""

    app_root: str = _option(".", "Application directory")
    address: str = _option("0.0.0.0", "Bind to the given address")
    port: int = _option(3000, "Use the given port number", minimum=1, maximum=65535)
    socket: str = _option("", "Bind to this Unix domain socket instead of TCP")
    environment: str = _option("development", "Web framework environment", per_app=True)
    python: str = _option(sys.executable, "Executable to use for Python apps", per_app=True)
    min_instances: int = _option(1, "Minimum number of processes per application",
                                 minimum=0, maximum=1000, per_app=True)
    max_pool_size: int = _option(6, "Maximum number of application processes",
                                 minimum=1, maximum=1000)
    max_instances_per_app: int = _option(0, "Maximum processes per application (0: no limit)",
                                         minimum=0, maximum=1000, per_app=True)
    pool_idle_time: int = _option(300, "Seconds an idle process may live (0: forever)",
                                  minimum=0, maximum=10**7)
    max_request_queue_size: int = _option(100, "Requests an app may queue (0: no limit)",
                                          minimum=0, maximum=10**6, per_app=True)
    request_queue_overflow_status_code: int = _option(
        503, "Status code when the queue is full", minimum=400, maximum=599, per_app=True)
    max_request_queue_time: int = _option(0, "Seconds a request may wait in the queue "
                                             "before it gets 504 (0: no limit)",
                                          minimum=0, maximum=86400, per_app=True)
    max_requests: int = _option(0, "Replace a process after this many requests (0: never)",
                                minimum=0, maximum=10**9, per_app=True)
    max_requests_jitter: int = _option(0, "Add 0..N to each process's --max-requests",
                                       minimum=0, maximum=10**9, per_app=True)
    memory_limit: int = _option(0, "Replace a process whose private dirty RSS exceeds this "
                                   "many MB (0: no limit)", minimum=0, maximum=10**7,
                                per_app=True)
    max_request_time: int = _option(0, "Seconds a request may run before it gets 504 and its "
                                       "process is replaced (0: no limit)",
                                    minimum=0, maximum=86400, per_app=True)
    start_timeout: int = _option(90, "Seconds an application process may take to start",
                                 minimum=1, maximum=86400, per_app=True)
    startup_file: str = _option("passenger_wsgi.py", "The WSGI file that defines `application`",
                                per_app=True)
    user: str = _option("", "When running as root: the user app processes run as (default: "
                            "the owner of the startup file, never root unless asked)",
                        per_app=True)
    app_start_command: str = _option("", "Run this command (it serves HTTP on $PORT) instead "
                                         "of a WSGI file", per_app=True)
    spawn_method: str = _option("smart", "How to start app processes",
                                choices=("smart", "direct"), per_app=True)
    max_preloader_idle_time: int = _option(300, "Seconds an idle preloader lives (0: forever)",
                                           minimum=0, maximum=10**7, per_app=True)
    concurrency_model: str = _option("process", "Requests per process: one (process) or "
                                                "--thread-count (thread)",
                                     choices=("process", "thread"), per_app=True)
    thread_count: int = _option(1, "Threads per process with --concurrency-model thread",
                                minimum=1, maximum=1000, per_app=True)
    friendly_error_pages: str = _option("auto", "Show spawn errors in detail to the browser "
                                                "(auto: unless the environment is staging or "
                                                "production)",
                                        choices=("auto", "true", "false"), per_app=True)
    restart_dir: str = _option("tmp", "Where restart.txt and always_restart.txt live "
                                      "(relative to the app root)", per_app=True)
    stat_throttle_rate: int = _option(10, "Check restart.txt at most every N seconds",
                                      minimum=0, maximum=86400, per_app=True)
    log_file: str = _option("", "Where to write log messages (default: in the app dir)")
    access_log: str = _option("", "Where to write the access log (default: none)")
    pid_file: str = _option("", "Where to store the PID file (default: in the app dir)")
    daemonize: bool = _option(False, "Daemonize into the background")
    limit_request_line: int = _option(8190, "Longest request line in bytes, else 414 (0: the "
                                            "largest, 65536)", minimum=0, maximum=65536)
    limit_request_fields: int = _option(100, "Most header fields in a request, else 431 (0: "
                                             "the largest, 32768)", minimum=0, maximum=32768)
    limit_request_field_size: int = _option(8190, "Longest header field in bytes, else 431 "
                                                  "(0: the largest, 65536)",
                                            minimum=0, maximum=65536)
    forwarded_allow_ips: str = _option("127.0.0.1,::1", "Proxies whose X-Forwarded-Proto, "
                                                        "X-Forwarded-Ssl and Forwarded "
                                                        "headers set the URL scheme "
                                                        "(comma-separated addresses or "
                                                        "networks; * for all)")
    server_header: bool = _option(True, "Send a Server header in responses")
    metrics_address: str = _option("", "HOST:PORT for /metrics, /healthz and /readyz "
                                       "(off when empty)")
    static_files: bool = _option(True, "Serve files under APP_DIR/public directly")
    client_header_timeout: int = _option(60, "Seconds a request head may take to arrive, "
                                             "else 408", minimum=1, maximum=86400)
    client_body_timeout: int = _option(60, "Seconds between two reads of a request body, "
                                           "else 408", minimum=1, maximum=86400)
    send_timeout: int = _option(60, "Seconds between two writes to a client that does not "
                                    "read, else the connection is closed",
                                minimum=1, maximum=86400)
    keepalive_timeout: int = _option(75, "Seconds an idle kept-alive connection stays open "
                                         "(0: no keep-alive)", minimum=0, maximum=86400)
    max_connections: int = _option(0, "Client connections at once; more wait in the "
                                      "backlog (0: as many as the descriptor limit allows)",
                                   minimum=0, maximum=10**7)
    request_buffering: bool = _option(True, "Read a request body whole (memory, then a "
                                            "file) before an app process gets it")
    client_max_body_size: int = _option(1024, "Largest request body in MB, else 413 "
                                              "(0: no limit)", minimum=0, maximum=10**7)
    graceful_timeout: int = _option(30, "Seconds in-flight requests may take to finish when "
                                        "stopping", minimum=0, maximum=3600)
    log_level: str = _option("info", "Least severe log level written",
                             choices=("debug", "info", "warning", "error"))
    instance_registry_dir: str = _option("", "Directory that holds instance directories")
    apps: tuple[dict[str, Any], ...] = _option(
        (), "Several apps: {app_root, server_names, base_uri, per-app options}")

    def app_configs(self) -> list[tuple[AppRoute, ServerConfig]]:
        """One (route, config) per app: the configured `apps`, or the one app_root."""
        if not self.apps:
            return [(AppRoute((), "/"), self)]
        return [(AppRoute(tuple(spec.get("server_names", ())), spec.get("base_uri", "/")),
                 dataclasses.replace(self, apps=(), **{
                     k: v for k, v in spec.items() if k not in ("server_names", "base_uri")}))
                for spec in self.apps]

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["apps"] = list(self.apps)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServerConfig:
        return parse_values(data, source=lambda name: f"'{name}'")

    @property
    def listen_url(self) -> str:
        return standalone.listen_url(self.address, self.port, self.socket)

    def default_log_file(self) -> str:
        """Passenger Standalone's default: `log/passenger.<port>.log` if `log/` exists."""
        return self.log_file or standalone.default_log_file(self.app_root, self.port)

    @property
    def concurrency(self) -> int:
        return self.thread_count if self.concurrency_model == "thread" else 1

    @property
    def shows_friendly_error_pages(self) -> bool:
        if self.friendly_error_pages == "auto":
            return self.environment not in ("staging", "production")
        return self.friendly_error_pages == "true"

    def default_pid_file(self) -> str:
        """Passenger Standalone's default: `tmp/pids/passenger.<port>.pid` if that dir exists."""
        return self.pid_file or standalone.default_pid_file(self.app_root, self.port)


@dataclass(frozen=True)
class AppRoute:
    """Which requests an app gets: any of `server_names` (all if empty), under `base_uri`."""

    server_names: tuple[str, ...]
    base_uri: str

    def matches(self, host: str, path: str) -> bool:
        if self.server_names and host not in self.server_names:
            return False
        base = self.base_uri.rstrip("/")
        return not base or path == base or path.startswith(base + "/")


OPTIONS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(ServerConfig)}


def flag_name(name: str) -> str:
    return "--app" if name == "apps" else "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return "PASSENGER_" + name.upper()


def _convert(name: str, raw: Any, where: str) -> Any:
    opt = OPTIONS[name]
    kind: type = type(opt.default)
    meta = opt.metadata
    if kind is tuple:
        return _convert_apps(raw, where)
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


APP_SPEC_KEYS = ("app_root", "server_names", "base_uri")


def parse_app_flag(spec: str) -> dict[str, Any]:
    """`--app [HOST][/URI]=PATH`, e.g. `example.com=/srv/a`, `/blog=/srv/blog`."""
    target, sep, root = spec.partition("=")
    if not sep or not root:
        raise ConfigError(f"--app: {spec!r} is not [HOST][/URI]=PATH")
    host, slash, uri = target.partition("/")
    entry: dict[str, Any] = {"app_root": root, "base_uri": "/" + uri if slash else "/"}
    if host:
        entry["server_names"] = [host]
    return entry


def _convert_apps(raw: Any, where: str) -> tuple[dict[str, Any], ...]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise ConfigError(f"{where}: not a JSON list of apps") from None
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(f"{where}: must be a list of apps")
    apps = []
    for i, item in enumerate(raw):
        spec = parse_app_flag(item) if isinstance(item, str) else item
        if not isinstance(spec, dict) or not isinstance(spec.get("app_root"), str):
            raise ConfigError(f"{where}[{i}]: each app needs an 'app_root'")
        app: dict[str, Any] = {"app_root": os.path.abspath(spec["app_root"])}
        if not os.path.isdir(app["app_root"]):
            raise ConfigError(f"{where}[{i}]: {app['app_root']!r} is not a directory")
        names = spec.get("server_names", [])
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{where}[{i}] 'server_names': must be a list of host names")
        app["server_names"] = [n.lower() for n in names]
        base = spec.get("base_uri", "/")
        if not isinstance(base, str) or not base.startswith("/"):
            raise ConfigError(f"{where}[{i}] 'base_uri': {base!r} must start with '/'")
        app["base_uri"] = base
        for key, value in spec.items():
            if key in APP_SPEC_KEYS:
                continue
            if key not in OPTIONS or not OPTIONS[key].metadata["per_app"]:
                allowed = ", ".join(k for k in OPTIONS if OPTIONS[k].metadata["per_app"])
                raise ConfigError(f"{where}[{i}] {key!r}: not a per-app option; "
                                  f"allowed: {', '.join(APP_SPEC_KEYS)}, {allowed}")
            app[key] = _convert(key, value, f"{where}[{i}] {key!r}")
        apps.append(app)
    return tuple(apps)


def parse_values(values: Mapping[str, Any], source: Any) -> ServerConfig:
    """Build a config from option name -> raw value; `source(name)` names the option in errors."""
    unknown = sorted(set(values) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"{source(unknown[0])}: unknown option; known: {', '.join(OPTIONS)}")
    converted = {name: _convert(name, raw, source(name)) for name, raw in values.items()}
    return _checked(ServerConfig(**converted))


def parse_allow_ips(spec: str) -> tuple[bool, tuple[IPNetwork, ...]]:
    """`127.0.0.1,::1,10.0.0.0/8` -> (False, networks); `*` -> (True, ()).
    Raises ConfigError naming the entry that is neither an address nor a network."""
    entries = [e.strip() for e in spec.split(",") if e.strip()]
    if "*" in entries:
        return True, ()
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError(f"--forwarded-allow-ips: {entry!r} is not an IP address or "
                              f"network; allowed: addresses, networks (10.0.0.0/8) or *, "
                              f"comma-separated") from None
    return False, tuple(networks)


def parse_host_port(spec: str, option: str = "--metrics-address") -> tuple[str, int]:
    """`127.0.0.1:9090`, `[::1]:9090` or `:9090` (all addresses) -> (host, port)."""
    host, port = split_host_port(spec, option)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{option}: {host!r} is not an IP address; "
                          f"{standalone.HOST_PORT_ALLOWED}") from None
    return host, port


def _checked(config: ServerConfig) -> ServerConfig:
    parse_allow_ips(config.forwarded_allow_ips)
    if config.metrics_address:
        parse_host_port(config.metrics_address)
    for _, app in config.app_configs():
        if app.user:
            try:
                pwd.getpwnam(app.user)
            except KeyError:
                raise ConfigError(f"--user: there is no user named {app.user!r}") from None
        if app.min_instances > config.max_pool_size:
            raise ConfigError(
                f"--min-instances: {app.min_instances} exceeds --max-pool-size "
                f"{config.max_pool_size}; allowed: 0..{config.max_pool_size}")
    return config
