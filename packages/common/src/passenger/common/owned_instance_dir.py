"""The watchdog's own instance directory: created in a registry that is safe to use,
locked for the watchdog's whole life, finalized once the server serves, removed at the
end. The layout and how others read it: `instance_dir`.

Paths are strings and calls are plain `os` ones (no pathlib, tempfile, secrets or
dataclasses, which would cost the watchdog 2.5 MB of its private memory); `instance_dir`
uses the names and checks defined here.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import time

from passenger.common import SERVER_SOFTWARE, VERSION
from passenger.common.safe_files import open_regular

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PREFIX = "passenger."
# The layout, Passenger 6's names where they fit (see instance_dir).
LOCK = "lock"
PROPERTIES = "properties.json"
CREATION_FINALIZED = "creation_finalized"
WATCHDOG_PID = "watchdog.pid"
ADMIN_SOCKET = "admin.sock"
LOGGING_FIFO = "logging.fifo"
ACCESS_FIFO = "access.fifo"
APPS_DIR = "apps"
BUFFERS_DIR = "buffers"

NAME_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
DIR_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789_"  # as tempfile.mkdtemp's


class UnsafePath(ValueError):
    """A path we would use is not as it must be; the message is one line for the user."""


def trusted_owner(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid())


def check_registry(path: str | os.PathLike[str]) -> None:
    """Raise UnsafePath unless `path` is a directory owned by root or us, which no one
    else can write to (or which is sticky, as /tmp is)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        if not trusted_owner(st):
            raise UnsafePath(f"--instance-registry-dir: {path} is a symbolic link owned by "
                             f"user {st.st_uid}; use a directory owned by root or by you")
        st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"--instance-registry-dir: {path} is not a directory")
    if not trusted_owner(st):
        raise UnsafePath(f"--instance-registry-dir: {path} is owned by user {st.st_uid}, "
                         f"who could move our instance directory; use a directory owned "
                         f"by root or by you")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise UnsafePath(f"--instance-registry-dir: {path} is writable by others and not "
                         f"sticky; use a directory only you can write to (or a sticky "
                         f"one, like /tmp)")


def registry_path(configured: str = "") -> str:
    """--instance-registry-dir, else $PASSENGER_INSTANCE_REGISTRY_DIR, else the system
    temp dir (found as tempfile.gettempdir() does, without importing tempfile)."""
    return configured or os.environ.get("PASSENGER_INSTANCE_REGISTRY_DIR") or temp_dir()


def temp_dir() -> str:
    candidates = [os.environ.get(name, "") for name in ("TMPDIR", "TEMP", "TMP")]
    for candidate in [*candidates, "/tmp", "/var/tmp", "/usr/tmp"]:
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return os.path.abspath(candidate)
    return os.getcwd()


def random_text(length: int, alphabet: str) -> str:
    """Unpredictable (os.urandom) and unbiased: bytes beyond the largest multiple of
    the alphabet's size are skipped."""
    limit = 256 - 256 % len(alphabet)
    chars: list[str] = []
    while len(chars) < length:
        chars += [alphabet[b % len(alphabet)] for b in os.urandom(length) if b < limit]
    return "".join(chars[:length])


MAX_PROPERTIES = 1 << 20


def read_properties(path: str) -> dict[str, Any]:
    """An instance's properties.json (a JSON object of at most MAX_PROPERTIES bytes)."""
    with os.fdopen(open_regular(path), "rb") as f:
        data = json.loads(f.read(MAX_PROPERTIES))
    if not isinstance(data, dict):
        raise ValueError("properties.json is not an object")
    return data


class InstancePaths:
    """The files of an instance directory, as plain strings: what the agents use
    (pathlib would cost each of them most of a megabyte)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def apps_dir(self) -> str:
        return self.file(APPS_DIR)

    @property
    def buffers_dir(self) -> str:
        """Request and response bodies the helper agent holds (unlinked files)."""
        return self.file(BUFFERS_DIR)

    def properties_name(self) -> str:
        """The instance's name, from the properties its watchdog wrote."""
        return str(read_properties(self.file(PROPERTIES)).get("name", "?"))

    @property
    def admin_socket(self) -> str:
        return self.file(ADMIN_SOCKET)

    @property
    def logging_fifo(self) -> str:
        return self.file(LOGGING_FIFO)

    @property
    def access_fifo(self) -> str:
        return self.file(ACCESS_FIFO)


class OwnedInstanceDir(InstancePaths):
    def __init__(self, path: str, name: str, lock_fd: int) -> None:
        super().__init__(path)
        self.name = name
        self.lock_fd = lock_fd

    @classmethod
    def create(cls, registry: str | os.PathLike[str],
               properties: dict[str, Any]) -> OwnedInstanceDir:
        """Raises UnsafePath if the registry is not safe to create it in."""
        registry = os.fspath(registry)
        if not os.path.lexists(registry):
            os.makedirs(registry, mode=0o755)
        check_registry(registry)
        path = _make_unique_dir(registry)  # 0700, ours
        os.chmod(path, 0o750)
        lock_fd = os.open(os.path.join(path, LOCK), os.O_RDWR | os.O_CREAT | os.O_EXCL
                          | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.mkdir(os.path.join(path, APPS_DIR), 0o700)
        os.mkdir(os.path.join(path, BUFFERS_DIR), 0o700)
        _write_new(os.path.join(path, WATCHDOG_PID), f"{os.getpid()}\n")
        name = random_text(8, NAME_ALPHABET)
        props = {
            "name": name,
            "instance_dir": {"created_at": int(time.time()), "major_version": 1,
                             "minor_version": 0},
            "passenger_version": VERSION,
            "server_software": SERVER_SOFTWARE,
            "integration_mode": "standalone",
            "watchdog_pid": os.getpid(),
            **properties,
        }
        _write_new(os.path.join(path, PROPERTIES), json.dumps(props, indent=2) + "\n")
        return cls(path, name, lock_fd)

    def finalize(self) -> None:
        _write_new(self.file(CREATION_FINALIZED), "")

    def close_and_remove(self) -> None:
        import shutil  # at the very end: no need to carry it all along

        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self.lock_fd)


def _make_unique_dir(registry: str) -> str:
    for _ in range(100):
        path = os.path.abspath(os.path.join(registry, PREFIX + random_text(8, DIR_ALPHABET)))
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free instance directory name in {registry}")


def _write_new(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o640)
    with os.fdopen(fd, "w") as f:
        f.write(text)
