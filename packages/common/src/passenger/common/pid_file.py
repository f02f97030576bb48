"""The PID file of a Passenger Standalone instance (what `passenger stop/status` read)."""

from __future__ import annotations

import contextlib
import os


class PidFileError(RuntimeError):
    pass


def read_pid(path: str) -> int | None:
    try:
        text = open(path).read().strip()  # noqa: SIM115 (tiny file)
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(path: str) -> None:
    """Write our PID, unless the file names another live process."""
    other = read_pid(path)
    if other is not None and other != os.getpid() and pid_alive(other):
        raise PidFileError(f"--pid-file: Passenger is already running on PID {other} "
                           f"according to {path}")
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise PidFileError(f"--pid-file: cannot write {path}: {exc.strerror}") from None


def release(path: str) -> None:
    if read_pid(path) == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
