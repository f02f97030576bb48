"""Where a configuration comes from, and in which order: the command line over the
`PASSENGER_*` environment over the app dir's Passengerfile.json over the defaults.

Run as root, a Passengerfile.json root does not own (the app's owner controls it) may
not say who the app runs as, what it runs, or where root writes, binds or looks.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable, Mapping
from typing import Any

from passenger.common.config import (
    OPTIONS,
    ConfigError,
    ServerConfig,
    env_name,
    flag_name,
    parse_values,
)
from passenger.common.safe_files import read_regular

# What root takes only from root: who the app runs as, what it runs, and where root
# writes, binds or looks for instances.
PRIVILEGED = ("user", "python", "log_file", "access_log", "pid_file",
              "instance_registry_dir", "socket")


def read_passengerfile(app_root: str,
                       warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The app dir's Passengerfile.json. Run as root, its privileged settings count only
    if root owns the file itself (not through a link): the app's owner controls it."""
    path = os.path.join(app_root, "Passengerfile.json")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    try:
        data = json.loads(read_regular(path, PASSENGERFILE_LIMIT, follow_links=True))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read as JSON: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: cannot be read as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a JSON object of options")
    if os.geteuid() == 0 and (st.st_uid != 0 or stat.S_ISLNK(st.st_mode)):
        _drop_privileged(data, path, warn or _warn)
    return data


PASSENGERFILE_LIMIT = 1 << 20


def _drop_privileged(data: dict[str, Any], path: str, warn: Callable[[str], None]) -> None:
    owner = "a link" if stat.S_ISLNK(os.lstat(path).st_mode) else \
        f"owned by user {os.lstat(path).st_uid}"
    places = [("", data)] + [(f"apps[{i}] ", app) for i, app in
                             enumerate(data.get("apps") or []) if isinstance(app, dict)]
    for where, values in places:
        for name in PRIVILEGED:
            if name in values:
                del values[name]
                warn(f"passenger start: ignoring {where}{name!r} in {path}: the file is "
                     f"{owner}, not root's; as root, {name} comes only from the command "
                     f"line, the environment or a file root owns")


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def resolve(cli: Mapping[str, Any], environ: Mapping[str, str] = os.environ,
            warn: Callable[[str], None] | None = None) -> ServerConfig:
    """Merge the four sources in precedence order and validate the result."""
    app_root = os.path.abspath(cli.get("app_root") or environ.get(env_name("app_root")) or ".")
    if not os.path.isdir(app_root):
        raise ConfigError(f"APP_DIR: {app_root!r} is not a directory")
    file_values = read_passengerfile(app_root, warn)
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
