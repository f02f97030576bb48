"""The PID file of a Passenger Standalone instance (what `passenger stop/status` read).

It usually lives in the app dir, which its owner controls: it is written, replaced and
removed through `safe_files` (as that owner when we are root), and read without
following links or blocking. `passenger stop` signals the PID only if it is a watchdog
that was running when the file was written: that check is the CLI's alone and uses
psutil, which the watchdog does without (`passenger.cli.processes.names_our_watchdog`).
"""

from __future__ import annotations

import os

from passenger.common import safe_files


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
    """Whether anything runs as `pid`, by signal 0 (the watchdog has no psutil)."""
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
    try:
        safe_files.write_atomically(path, f"{os.getpid()}\n")
    except OSError as exc:
        raise PidFileError(f"--pid-file: cannot write {path}: {exc.strerror}") from None


def release(path: str) -> None:
    if read_pid(path) == os.getpid():
        try:
            safe_files.remove(path)
        except OSError:
            pass
