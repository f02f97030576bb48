"""The PID file of a Passenger Standalone instance (what `passenger stop/status` read).

It usually lives in the app dir, which its owner controls: it is written, replaced and
removed through `safe_files` (as that owner when we are root), and read without
following links or blocking. `passenger stop` signals the PID only if it is a watchdog
that was running when the file was written (see `names_our_watchdog`).
"""

from __future__ import annotations

import contextlib
import os
import time

from passenger.common import safe_files
from passenger.common.procfs import CLOCK_TICKS, ProcessGone, ProcFS

WATCHDOG_TITLE = "PassengerWatchdog"


class PidFileError(RuntimeError):
    pass


def read_pid(path: str) -> int | None:
    try:
        text = safe_files.read_small(path)
    except OSError:
        return None
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isdigit() else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def names_our_watchdog(path: str, pid: int) -> bool:
    """Whether `pid` is a Passenger watchdog that started before `path` was written: a
    stale file's PID, reused by any other process since, is not signalled."""
    procfs = ProcFS()
    try:
        title = procfs.cmdline(pid) or ""
        started = _boot_time() + procfs.stat(pid).start_ticks / CLOCK_TICKS
        written = os.lstat(path).st_mtime
    except (ProcessGone, OSError):
        return False
    return title.startswith(WATCHDOG_TITLE) and started <= written + 1.0


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return time.time() - ProcFS().uptime()


def claim(path: str) -> None:
    """Write our PID, unless the file names another live process."""
    other = read_pid(path)
    if other is not None and other != os.getpid() and pid_alive(other):
        raise PidFileError(f"--pid-file: Passenger is already running on PID {other} "
                           f"according to {path}")
    try:
        safe_files.write_atomically(path, f"{os.getpid()}\n")
    except OSError as exc:
        raise PidFileError(f"--pid-file: cannot write {path}: {exc.strerror}") from None


def release(path: str) -> None:
    if read_pid(path) == os.getpid():
        with contextlib.suppress(OSError):
            safe_files.remove(path)
