"""passenger-memory-stats: what every Apache, Nginx and Passenger process really costs.

Users run this when the server is in trouble, so it talks to no agent: it reads `/proc`
itself and works when every agent is dead. The process table comes from psutil
(`passenger.cli.processes`); the memory figures of the processes listed from our own
reader (`passenger.common.procfs`), as psutil has no private dirty RSS as Passenger
defines it. Output follows Phusion Passenger 6's tool column for column; `--pss` and
`--json` go further.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from passenger.cli.processes import ProcessEntry, entries
from passenger.cli.terminal import printable
from passenger.common import VERSION
from passenger.common.procfs import MemoryUsage, ProcessGone, ProcFS

# The help text is the parser (docopt); the first two options are Passenger's.
USAGE = """\
Usage: passenger-memory-stats [-h|--help] [--no-apache] [--no-nginx] [--pss] [--json]

Tool for inspecting the application server and Passenger's memory statistics.

Options:
        --no-apache                  Do not display the Apache statistics.
        --no-nginx                   Do not display the Nginx statistics.
        --pss                        Also show each process's proportional set size
                                     (PSS) and shared memory, so that pages shared
                                     copy-on-write between app processes are visible.
        --json                       Print every figure (in kB) as JSON.
"""

SUDO_WARNING = ("*** WARNING: Please run this tool with {b}sudo{r}. Otherwise the private "
                "dirty RSS (a reliable metric for real memory usage) of processes cannot be "
                "determined.")

# Titles our agents and app processes set (passenger.common.process_title), and the
# first words of real Phusion Passenger's ("Passenger watchdog", "Passenger core",
# "Passenger AppPreloader: ...", "Passenger RubyApp: ..."): all start with "Passenger".
PASSENGER_PREFIX = "Passenger"
# Scripts real Passenger runs under an interpreter, titled by their command line.
PASSENGER_LOADERS = frozenset({"wsgi-loader.py", "rack-loader.rb", "node-loader.js"})
INTERPRETERS = ("python", "pypy", "ruby", "node")
# `ps -C` names, as Passenger looks them up, plus the binaries distributions ship per MPM
# (Red Hat's `httpd.worker`, `httpd.event`) and Debian's `nginx-debug`. Exact names:
# `nginx-prometheus-exporter` or `apache2ctl` are not web servers.
APACHE_NAMES = frozenset({"apache2", "httpd", "httpd.worker", "httpd.event", "httpd.prefork",
                          "apache2.worker", "httpd-prefork", "httpd-worker", "httpd-event"})
NGINX_NAMES = frozenset({"nginx", "nginx-debug"})


def _basename(word: str) -> str:
    return word.rsplit("/", 1)[-1]


def is_passenger(entry: ProcessEntry) -> bool:
    """By title, like Passenger's `ps -A` filter, but by the command's own name only, so
    that `grep Passenger` or `less PassengerWatchdog.log` is not listed."""
    words = entry.title.split(None, 3)
    if not words:
        return False
    if _basename(words[0]).startswith(PASSENGER_PREFIX):
        return True
    # An agent or loader run as a script, before (or without) setting its title:
    # "/usr/bin/python3 /usr/share/passenger/helper-scripts/wsgi-loader.py".
    if _basename(words[0]).startswith(INTERPRETERS):
        for word in words[1:3]:
            name = _basename(word)
            if name in PASSENGER_LOADERS or name.startswith(PASSENGER_PREFIX):
                return True
    return False


def _named(entry: ProcessEntry, names: frozenset[str]) -> bool:
    """`ps -C name` matches comm; the executable's name (argv[0]) counts too."""
    return entry.comm in names or _basename(entry.title.split(" ", 1)[0]) in names


def is_nginx(entry: ProcessEntry) -> bool:
    return _named(entry, NGINX_NAMES) or entry.title.startswith("nginx: ")


def is_apache(entry: ProcessEntry) -> bool:
    return _named(entry, APACHE_NAMES)


# Records are NamedTuples, not dataclasses: importing dataclasses (and with it
# inspect) costs about a tenth of a run on a busy machine.
class GroupSpec(NamedTuple):
    key: str
    title: str
    show_ppid: bool


APACHE = GroupSpec("apache", "Apache processes", show_ppid=True)
NGINX = GroupSpec("nginx", "Nginx processes", show_ppid=True)
PASSENGER = GroupSpec("passenger", "Passenger processes", show_ppid=False)


def group_of(entry: ProcessEntry) -> GroupSpec | None:
    """Passenger first: a process of ours is listed there and nowhere else, even when
    it runs under Apache or Nginx."""
    if is_passenger(entry):
        return PASSENGER
    if is_nginx(entry):
        return NGINX
    if is_apache(entry):
        return APACHE
    return None


class ProcessMemory(NamedTuple):
    entry: ProcessEntry
    usage: MemoryUsage

    @property
    def private_dirty_kb(self) -> int | None:
        return self.usage.smaps_kb("Private_Dirty")

    @property
    def pss_kb(self) -> int | None:
        return self.usage.smaps_kb("Pss")

    @property
    def shared_kb(self) -> int | None:
        return self.usage.smaps_kb("Shared_Clean", "Shared_Dirty")

    def as_json(self) -> dict[str, Any]:
        figure = self.usage.smaps_kb
        return {
            "pid": self.entry.pid, "ppid": self.entry.ppid, "name": self.entry.title,
            "comm": self.entry.comm, "threads": self.usage.threads,
            "vm_size_kb": self.usage.vm_size_kb, "rss_kb": figure("Rss"),
            "private_dirty_kb": self.private_dirty_kb, "private_clean_kb": figure("Private_Clean"),
            "pss_kb": self.pss_kb, "shared_kb": self.shared_kb,
            "shared_clean_kb": figure("Shared_Clean"), "shared_dirty_kb": figure("Shared_Dirty"),
            "swap_kb": figure("Swap"),
        }


class Group:
    def __init__(self, spec: GroupSpec) -> None:
        self.spec = spec
        self.processes: list[ProcessMemory] = []

    def total(self, figure: str) -> tuple[int, bool]:
        """Sum of a per-process figure and whether every value was known."""
        values = [getattr(p, figure) for p in self.processes]
        return sum(v for v in values if v is not None), all(v is not None for v in values)


def collect(procfs: ProcFS, specs: Sequence[GroupSpec],
            exclude: Iterable[int] = ()) -> list[Group]:
    """One pass over every process's name and command line (psutil, under the same
    root as `procfs`); the memory files are read only for the processes listed.
    Processes that exit meanwhile are left out, and so are zombies: they have exited
    already and hold no memory."""
    groups = {spec.key: Group(spec) for spec in specs}
    skip = set(exclude)

    def group_for(entry: ProcessEntry) -> Group | None:
        """Where it is listed, if anywhere: zombies and excluded PIDs are not."""
        spec = group_of(entry)
        if spec is None or entry.zombie or entry.pid in skip:
            return None
        return groups.get(spec.key)

    for entry in entries(procfs.root, keep=lambda e: group_for(e) is not None):
        group = group_for(entry)
        assert group is not None  # keep saw to it
        try:
            usage = procfs.memory(entry.pid)
        except ProcessGone:
            continue
        group.processes.append(ProcessMemory(entry, usage))
    return list(groups.values())


# -- text output, Passenger's layout ---------------------------------------------------

class Colors(NamedTuple):
    """Passenger's ANSI colours: all empty unless stdout is a terminal."""

    reset: str = ""
    bold: str = ""
    yellow: str = ""
    white: str = ""
    blue_bg: str = ""

    @classmethod
    def for_terminal(cls, enabled: bool) -> Colors:
        if not enabled:
            return cls()
        return cls(reset="\033[0m", bold="\033[1m", yellow="\033[33m", white="\033[37m",
                   blue_bg="\033[44m")


def mb(kb: int | None) -> str:
    return "?" if kb is None else f"{kb / 1024:.1f} MB"


def render_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]],
                 colors: Colors) -> str:
    """Left-aligned columns as wide as their widest value, 2 spaces apart; the title bar
    and the rule are one character longer than the header (Passenger counts its '\\n')."""
    widths = [max([1, len(col)] + [len(row[i]) for row in rows])
              for i, col in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    header = line(columns)
    free = len(header) + 1 - len(title) - 2
    left, right = (3, 3) if free <= 0 else (free // 2, free - free // 2)
    out = [f"{colors.blue_bg}{colors.bold}{colors.yellow}\n",
           f"{'-' * left} {title} {'-' * right}\n"]
    if rows:
        out.append(f"{colors.white}{header}\n{'-' * (len(header) + 1)}{colors.reset}\n")
        out.extend(line(row) + "\n" for row in rows)
    elif colors.reset:
        out.append(colors.reset + "\n")  # Ruby's `puts` adds the newline after the reset
    return "".join(out)


def render_group(group: Group, colors: Colors, pss: bool) -> str:
    columns = ["PID", "PPID", "VMSize", "Private", "PSS", "Shared", "Name"]
    if not group.spec.show_ppid:
        columns.remove("PPID")
    if not pss:
        columns.remove("PSS")
        columns.remove("Shared")
    rows = []
    for p in sorted(group.processes, key=lambda p: p.entry.pid):
        values = {"PID": str(p.entry.pid), "PPID": str(p.entry.ppid),
                  "VMSize": mb(p.usage.vm_size_kb), "Private": mb(p.private_dirty_kb),
                  "PSS": mb(p.pss_kb), "Shared": mb(p.shared_kb), "Name": p.entry.title}
        rows.append([values[c] for c in columns])
    out = [render_table(group.spec.title, columns, rows, colors)]
    total, known = group.total("private_dirty_kb")
    out.append(f"### Processes: {len(group.processes)}\n")
    out.append(f"### Total private dirty RSS: {total / 1024:.2f} MB{'' if known else ' (?)'}\n")
    if pss:
        total, known = group.total("pss_kb")
        out.append(f"### Total PSS: {total / 1024:.2f} MB{'' if known else ' (?)'}\n")
    return "".join(out)


def needs_sudo(groups: Sequence[Group], euid: int) -> bool:
    """Passenger warns only when not root: as root an unreadable smaps is not a matter
    of privileges (e.g. a process holding capabilities we lack)."""
    return euid != 0 and any(p.private_dirty_kb is None for g in groups for p in g.processes)


def render_text(groups: Sequence[Group], now: datetime.datetime, euid: int,
                colors: Colors, pss: bool = False) -> str:
    """Sections in Passenger's order and spacing: a blank line before each title bar,
    and one more between sections."""
    out = [f"Version: {VERSION}\n", f"Date   : {now.strftime('%Y-%m-%d %H:%M:%S %z')}\n"]
    for group in groups:
        if group.spec is not APACHE:
            out.append("\n")
        out.append(render_group(group, colors, pss))
    if needs_sudo(groups, euid):
        out.append(SUDO_WARNING.format(b=colors.bold, r=colors.reset) + "\n")
    return "".join(out)


def render_json(groups: Sequence[Group], now: datetime.datetime, euid: int) -> str:
    doc: dict[str, Any] = {"version": VERSION, "date": now.isoformat(timespec="seconds"),
                           "groups": {}}
    for group in groups:
        private, private_known = group.total("private_dirty_kb")
        pss, pss_known = group.total("pss_kb")
        doc["groups"][group.spec.key] = {
            "title": group.spec.title,
            "process_count": len(group.processes),
            "total_private_dirty_kb": private, "total_private_dirty_complete": private_known,
            "total_pss_kb": pss, "total_pss_complete": pss_known,
            "processes": [p.as_json() for p in sorted(group.processes,
                                                      key=lambda p: p.entry.pid)],
        }
    doc["warning"] = (SUDO_WARNING.format(b="", r="") if needs_sudo(groups, euid) else None)
    return json.dumps(doc, indent=2) + "\n"


# -- entry point -------------------------------------------------------------------------

def run(argv: Sequence[str], procfs: ProcFS | None = None, euid: int | None = None,
        tty: bool | None = None) -> str:
    """Parse the options, read /proc, return the report (the testable core of main)."""
    from passenger.cli.command_line import parse  # here: importing this module stays cheap

    args = parse(USAGE, argv, "passenger-memory-stats", default_help=True)
    specs = [spec for spec, shown in ((APACHE, not args["--no-apache"]),
                                      (NGINX, not args["--no-nginx"]),
                                      (PASSENGER, True)) if shown]
    groups = collect(procfs or ProcFS(), specs, exclude=[os.getpid()])
    now = datetime.datetime.now().astimezone()
    euid = os.geteuid() if euid is None else euid
    if args["--json"]:
        return render_json(groups, now, euid)
    colors = Colors.for_terminal(sys.stdout.isatty() if tty is None else tty)
    return render_text(groups, now, euid, colors, pss=bool(args["--pss"]))


def main(argv: Sequence[str] | None = None) -> int:
    from passenger.cli.command_line import entry_point

    def show() -> int:
        report = run(sys.argv[1:] if argv is None else argv)
        sys.stdout.write(printable(report))  # command lines are anyone's to choose
        return 0
    return int(entry_point(show)())


if __name__ == "__main__":
    sys.exit(main())
