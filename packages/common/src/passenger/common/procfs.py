"""Reading `/proc` without psutil, under a configurable root so tests can use fixture
trees: what the agents need (they install without psutil: DESIGN.md, "Each agent
installs alone"), and the one figure psutil lacks, private dirty RSS as Passenger
defines it (Private_Dirty, plus Swap, from smaps_rollup). The CLI takes its process
table from psutil (`passenger.cli.processes`) and its memory figures from here.

Processes come and go while we read: a vanished process raises `ProcessGone`, a file we
may not read (another user's process without root) gives None, never a traceback.

Files are read with plain `os.open`/`os.read` on string paths; neither pathlib nor
dataclasses is imported: the agents poll these files, and `passenger-memory-stats`
must start fast.
"""

from __future__ import annotations

import errno
import os
from typing import NamedTuple

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
READ_SIZE = 65536


class ProcessGone(Exception):
    """The process exited while we were reading it."""


class ProcStat(NamedTuple):
    pid: int
    comm: str
    state: str
    ppid: int
    utime_ticks: int
    stime_ticks: int
    start_ticks: int
    vsize_bytes: int


class MemoryUsage(NamedTuple):
    """One process's memory figures in kB. `smaps` is None when the smaps files could not
    be read (another user's process without root); `vm_size_kb` is 0 for a zombie."""

    vm_size_kb: int | None
    threads: int | None
    smaps: dict[str, int] | None

    def smaps_kb(self, *keys: str) -> int | None:
        """The sum of the given smaps fields, or None when smaps was unreadable."""
        if self.smaps is None:
            return None
        return sum(self.smaps.get(key, 0) for key in keys)


class ProcFS:
    def __init__(self, root: str | os.PathLike[str] = "/proc") -> None:
        self.root = os.fspath(root)
        self._prefix = self.root + "/"

    def _read(self, pid: int, name: str) -> bytes | None:
        try:
            fd = os.open(f"{self._prefix}{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                chunks = []
                while chunk := os.read(fd, READ_SIZE):
                    chunks.append(chunk)
                    # Files of one record (stat, status, cmdline, smaps_rollup) end at
                    # the first short read: saves a read() per file. smaps is a
                    # sequence of records and may return short reads before its end.
                    if len(chunk) < READ_SIZE and name != "smaps":
                        break
            finally:
                os.close(fd)
        except (FileNotFoundError, ProcessLookupError):
            raise ProcessGone(pid) from None
        except PermissionError:
            return None
        except OSError as exc:
            if exc.errno == errno.ESRCH:  # the process is exiting under us
                raise ProcessGone(pid) from None
            return None
        return b"".join(chunks)

    def stat(self, pid: int) -> ProcStat:
        data = self._read(pid, "stat")
        if data is None:
            raise ProcessGone(pid)
        text = data.decode("utf-8", "replace")
        # comm may hold spaces and parentheses: it ends at the *last* ')'.
        left, right = text.find("("), text.rfind(")")
        fields = text[right + 2:].split()
        return ProcStat(pid=pid, comm=text[left + 1:right], state=fields[0],
                        ppid=int(fields[1]), utime_ticks=int(fields[11]),
                        stime_ticks=int(fields[12]), start_ticks=int(fields[19]),
                        vsize_bytes=int(fields[20]))

    def status_fields(self, pid: int) -> dict[str, str] | None:
        """`/proc/<pid>/status` as a dict of raw values ("VmSize" -> "6532 kB")."""
        data = self._read(pid, "status")
        if data is None:
            return None
        fields = {}
        for line in data.decode("utf-8", "replace").splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key] = value.strip()
        return fields

    def memory(self, pid: int) -> MemoryUsage:
        """VM size and thread count from `status`, all smaps sums; raises ProcessGone."""
        fields = self.status_fields(pid)
        vm_size: int | None = None
        threads: int | None = None
        if fields is not None:
            # A zombie has no Vm* lines: it maps nothing, as `ps` says with vsz 0.
            vm_size = int(fields.get("VmSize", "0 kB").split()[0])
            threads = int(fields["Threads"]) if "Threads" in fields else None
        return MemoryUsage(vm_size_kb=vm_size, threads=threads, smaps=self.smaps_totals(pid))

    def status_kb(self, pid: int, key: str) -> int | None:
        data = self._read(pid, "status")
        if data is None:
            return None
        prefix = key.encode() + b":"
        for line in data.splitlines():
            if line.startswith(prefix):
                return int(line.split()[1])
        return None

    def smaps_totals(self, pid: int) -> dict[str, int] | None:
        """Sums of each smaps field in kB, from smaps_rollup, else smaps; None if unreadable."""
        for name in ("smaps_rollup", "smaps"):
            try:
                data = self._read(pid, name)
            except ProcessGone:
                if name == "smaps" or not os.path.exists(f"{self._prefix}{pid}"):
                    raise
                continue
            if data is None:
                if os.path.exists(f"{self._prefix}{pid}/{name}"):
                    return None
                continue
            totals: dict[str, int] = {}
            for line in data.splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[2] == b"kB" and parts[0].endswith(b":"):
                    key = parts[0][:-1].decode()
                    totals[key] = totals.get(key, 0) + int(parts[1])
            if totals or name == "smaps":
                return totals
        return None

    def uptime(self) -> float:
        with open(f"{self._prefix}uptime") as f:
            return float(f.read().split()[0])

    def cpu_percent(self, pid: int) -> float:
        """CPU time over the process's lifetime, as `ps %cpu` (and Passenger) report it."""
        st = self.stat(pid)
        lifetime = self.uptime() - st.start_ticks / CLOCK_TICKS
        if lifetime <= 0:
            return 0.0
        return 100.0 * (st.utime_ticks + st.stime_ticks) / CLOCK_TICKS / lifetime

    def real_memory_kb(self, pid: int) -> int | None:
        """Private dirty RSS plus swap, Passenger's "Memory" figure."""
        totals = self.smaps_totals(pid)
        if totals is None:
            return None
        return totals.get("Private_Dirty", 0) + totals.get("Swap", 0)
