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
        buffers/             request and response bodies the helper agent holds

An instance whose `lock` can be taken is stale: its watchdog is gone. The watchdog
creates, locks and removes its own (`owned_instance_dir`, where the names are defined);
this module is how the others find and read instances.

Another local user can write to the default registry (/tmp), so nothing found there is
trusted as such: the registry must be owned by root or us and be sticky or writable by
no one else; an instance counts only if its directory, lock, properties and admin
socket are owned by root or by us and its directory is writable by no one else; files
are opened without following symbolic links and without blocking (a FIFO planted as
`lock` must not hang `passenger-status`). Our own instance directory is 0750, its files
0640 (the sockets and pipes in it 0600).
"""

from __future__ import annotations

import fcntl
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from passenger.common import SERVER_SOFTWARE
from passenger.common.owned_instance_dir import (
    ADMIN_SOCKET,
    CREATION_FINALIZED,
    LOCK,
    PREFIX,
    PROPERTIES,
    OwnedInstanceDir,
    UnsafePath,
    check_registry,
    read_properties,
    registry_path,
)
from passenger.common.owned_instance_dir import trusted_owner as _trusted_owner
from passenger.common.safe_files import open_regular

__all__ = ["PREFIX", "InstanceDir", "OwnedInstanceDir", "UnsafePath", "check_registry",
           "foreign_because", "list_instances", "registry_dir", "untrusted_because"]
UNFINALIZED_GRACE_SECONDS = 60.0


def untrusted_because(path: Path) -> str:
    """Why the instance directory at `path` must not be used ("" if it may)."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if not _trusted_owner(st):
        return f"is owned by user {st.st_uid}, neither root nor you"
    if st.st_mode & 0o022:
        return "is writable by others"
    for name, kind in ((LOCK, stat.S_ISREG), (PROPERTIES, stat.S_ISREG),
                       (ADMIN_SOCKET, stat.S_ISSOCK)):
        try:
            entry = os.lstat(path / name)
        except FileNotFoundError:
            continue
        if not kind(entry.st_mode):
            return f"has a {name} of the wrong type"
        if not _trusted_owner(entry):
            return f"has a {name} owned by user {entry.st_uid}"
    return ""


def registry_dir(configured: str = "") -> Path:
    return Path(registry_path(configured))


@dataclass
class InstanceDir:
    path: Path

    @property
    def admin_socket(self) -> Path:
        return self.path / ADMIN_SOCKET

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK

    def properties(self) -> dict[str, Any]:
        return read_properties(os.fspath(self.path / PROPERTIES))

    @property
    def name(self) -> str:
        return str(self.properties().get("name", "?"))

    def is_finalized(self) -> bool:
        return (self.path / CREATION_FINALIZED).exists()

    def is_locked(self) -> bool:
        """True while a watchdog holds the lock, i.e. the instance is alive."""
        try:
            fd = open_regular(os.fspath(self.lock_file))
        except FileNotFoundError:
            return False
        except OSError:
            return True  # not a lock we can judge: not ours to call stale
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def remove(self) -> None:
        import shutil  # at the end only: the agents need not carry it

        shutil.rmtree(self.path, ignore_errors=True)


def _candidates(registry: Path, report_skipped: Any = None) -> Iterator[InstanceDir]:
    try:
        entries = sorted(registry.iterdir())
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(PREFIX):
            continue
        why = untrusted_because(entry) or foreign_because(InstanceDir(entry))
        if why:
            if report_skipped is not None:
                report_skipped(entry, why)
            continue
        yield InstanceDir(entry)


def foreign_because(inst: InstanceDir) -> str:
    """Why an instance directory belongs to other software ("" if ours, or not yet
    known): real Phusion Passenger shares the registry (/tmp) and the name pattern.
    Those are neither counted, nor talked to, nor cleaned."""
    try:
        software = str(inst.properties().get("server_software", ""))
    except FileNotFoundError:  # being created; Passenger's have agents.s/ from the start
        return ("is foreign: an instance of Phusion Passenger"
                if os.path.lexists(inst.path / "agents.s") else "")
    except (OSError, ValueError):
        return ""
    if software.split("/", 1)[0] == SERVER_SOFTWARE.split("/", 1)[0]:
        return ""
    return f"is foreign: an instance of {software or 'another program'}"


def list_instances(registry: Path, report_stale: Any = None,
                   report_skipped: Any = None) -> list[InstanceDir]:
    """Live instances in `registry`; stale ones are removed and reported via
    `report_stale`; ones we must not trust are left alone, told to `report_skipped`."""
    live = []
    for inst in _candidates(registry, report_skipped):
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
