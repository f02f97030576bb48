"""The instance directory: where a running server keeps its sockets, lock and properties.

Layout (Passenger 6 names where they fit)::

    <registry>/passenger.XXXXXXXX/
        properties.json      instance name, watchdog pid, version, listen address, app root
        lock                 the watchdog holds flock(LOCK_EX) on it for its whole life
        creation_finalized   written last; a directory without it is still being created
        watchdog.pid
        admin.sock           helper agent admin API (HTTP/1.1 + JSON)
        logging.fifo         main log lines for the logging agent
        access.fifo          access log lines for the logging agent
        apps/                one Unix socket per app process

An instance whose `lock` can be taken is stale: its watchdog is gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import string
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from passenger.common import SERVER_SOFTWARE, VERSION

PREFIX = "passenger."
UNFINALIZED_GRACE_SECONDS = 60.0


def registry_dir(configured: str = "") -> Path:
    return Path(configured or os.environ.get("PASSENGER_INSTANCE_REGISTRY_DIR")
                or tempfile.gettempdir())


@dataclass
class InstanceDir:
    path: Path

    @property
    def admin_socket(self) -> Path:
        return self.path / "admin.sock"

    @property
    def logging_fifo(self) -> Path:
        return self.path / "logging.fifo"

    @property
    def access_fifo(self) -> Path:
        return self.path / "access.fifo"

    @property
    def apps_dir(self) -> Path:
        return self.path / "apps"

    @property
    def buffers_dir(self) -> Path:
        """Request and response bodies the helper agent holds (unlinked files)."""
        return self.path / "buffers"

    @property
    def lock_file(self) -> Path:
        return self.path / "lock"

    def properties(self) -> dict[str, Any]:
        data = json.loads((self.path / "properties.json").read_text())
        if not isinstance(data, dict):
            raise ValueError("properties.json is not an object")
        return data

    @property
    def name(self) -> str:
        return str(self.properties().get("name", "?"))

    def is_finalized(self) -> bool:
        return (self.path / "creation_finalized").exists()

    def is_locked(self) -> bool:
        """True while a watchdog holds the lock, i.e. the instance is alive."""
        try:
            fd = os.open(self.lock_file, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class OwnedInstanceDir(InstanceDir):
    """The watchdog's own instance directory: created, locked and finally removed by it."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        super().__init__(path)
        self.lock_fd = lock_fd

    @classmethod
    def create(cls, registry: Path, properties: dict[str, Any]) -> OwnedInstanceDir:
        registry.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=registry))
        os.chmod(path, 0o755)
        lock_fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        (path / "apps").mkdir(mode=0o700)
        (path / "buffers").mkdir(mode=0o700)
        (path / "watchdog.pid").write_text(f"{os.getpid()}\n")
        alphabet = string.ascii_letters + string.digits
        props = {
            "name": "".join(secrets.choice(alphabet) for _ in range(8)),
            "instance_dir": {"created_at": int(time.time()), "major_version": 1,
                             "minor_version": 0},
            "passenger_version": VERSION,
            "server_software": SERVER_SOFTWARE,
            "integration_mode": "standalone",
            "watchdog_pid": os.getpid(),
            **properties,
        }
        (path / "properties.json").write_text(json.dumps(props, indent=2) + "\n")
        return cls(path, lock_fd)

    def finalize(self) -> None:
        (self.path / "creation_finalized").touch()

    def close_and_remove(self) -> None:
        self.remove()
        os.close(self.lock_fd)


def _candidates(registry: Path) -> Iterator[InstanceDir]:
    try:
        entries = sorted(registry.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(PREFIX) and entry.is_dir() and not entry.is_symlink():
            yield InstanceDir(entry)


def list_instances(registry: Path, report_stale: Any = None) -> list[InstanceDir]:
    """Live instances in `registry`; stale ones are removed and reported via `report_stale`."""
    live = []
    for inst in _candidates(registry):
        if inst.is_locked():
            if inst.is_finalized():
                live.append(inst)
            continue
        if not inst.is_finalized():
            try:
                age = time.time() - inst.path.stat().st_mtime
            except OSError:
                continue
            if age < UNFINALIZED_GRACE_SECONDS:
                continue  # being created right now
        if os.stat(inst.path).st_uid not in (os.getuid(), 0) and os.getuid() != 0:
            continue  # not ours to clean
        inst.remove()
        if report_stale is not None:
            report_stale(inst)
    return live
