"""Processes as the command-line tools see them, through psutil: the process table,
liveness, and whether a PID file still names our watchdog.

psutil is the CLI's alone: the agents install without it (DESIGN.md, "Each agent
installs alone"), so what they need of `/proc` stays in `passenger.common.procfs`, as
does the one figure psutil lacks, Passenger's private dirty RSS (see `memory_stats`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import NamedTuple

import psutil

WATCHDOG_TITLE = "PassengerWatchdog"
COMM_LEN = 15  # the kernel keeps this many bytes of a process's name


class ProcessEntry(NamedTuple):
    """What decides which group a process belongs to: its name as `ps -C` sees it
    (`comm`) and as `ps -o args` shows it (`title`)."""

    pid: int
    ppid: int
    comm: str
    zombie: bool  # exited, not reaped yet by its parent, holding no memory
    title: str  # the command line, NULs as spaces; "[comm]" for kernel threads, as ps


@contextlib.contextmanager
def procfs_at(root: str | os.PathLike[str]) -> Iterator[None]:
    """psutil reads `/proc` at `psutil.PROCFS_PATH`: point it elsewhere meanwhile (tests
    use fake trees). Every psutil.Process must be made inside: it keeps the path."""
    saved, psutil.PROCFS_PATH = psutil.PROCFS_PATH, os.fspath(root)
    try:
        yield
    finally:
        psutil.PROCFS_PATH = saved


def _text(raw: str) -> str:
    """psutil decodes with surrogateescape, and a lone surrogate cannot be printed:
    undecodable bytes become U+FFFD instead."""
    return raw if raw.isascii() else os.fsencode(raw).decode("utf-8", "replace")


def _comm(name: str, args: list[str]) -> str:
    """The kernel's name: psutil lengthens a 15-byte name to the command's basename when
    that starts with it ("PassengerWatchdo" -> "PassengerWatchdog"), `ps -C` does not."""
    if len(name) > COMM_LEN and args and os.path.basename(args[0]) == name:
        return name[:COMM_LEN]
    return name


def _entry(proc: psutil.Process) -> ProcessEntry:
    name = proc.name()
    zombie = False
    try:
        args = proc.cmdline()
    except psutil.ZombieProcess:  # how psutil says it: a zombie has no command line left
        args, zombie = [], True
    except psutil.AccessDenied:
        args = []
    comm = _text(_comm(name, args))
    title = _text(" ".join(args).replace("\0", " ").rstrip())
    return ProcessEntry(pid=proc.pid, ppid=0, comm=comm, zombie=zombie,
                        title=title or f"[{comm}]")


def entries(root: str | os.PathLike[str] = "/proc",
            keep: Callable[[ProcessEntry], bool] | None = None) -> list[ProcessEntry]:
    """Every process on the machine, or those `keep` accepts, by PID; processes that
    exit while we read them are left out. `keep` judges an entry before its PPID is
    read (0 until then): psutil reads the process again for it, to check that the PID
    was not reused, and doing so for every process makes a scan 40% slower."""
    found = []
    with procfs_at(root):
        for pid in psutil.pids():
            try:
                proc = psutil.Process(pid)
                entry = _entry(proc)
                if keep is None or keep(entry):
                    found.append(entry._replace(ppid=proc.ppid()))
            except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
                continue  # gone, or hidden from us (hidepid): not listed, as by ps
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs: not a zombie (its parent, perhaps init, may be slow to reap
    it); another user's process counts even where we may not look at it."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.AccessDenied:
        return True
    except psutil.NoSuchProcess:
        return False


def names_our_watchdog(path: str, pid: int) -> bool:
    """Whether `pid` is a Passenger watchdog that started before `path` was written: a
    stale file's PID, reused by any other process since, is not signalled."""
    try:
        proc = psutil.Process(pid)
        title = " ".join(proc.cmdline())
        started = proc.create_time()
        written = os.lstat(path).st_mtime
    except (psutil.Error, OSError):
        return False
    return title.startswith(WATCHDOG_TITLE) and started <= written + 1.0
