"""passenger-memory-stats on fixture procfs trees: grouping, Passenger's exact layout
(checked against real Passenger 6.0.17 output), unknown values, vanishing processes,
and the options."""

from __future__ import annotations

import builtins
import datetime
import json
import math
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from passenger.cli import memory_stats
from passenger.cli.memory_stats import (
    APACHE,
    NGINX,
    PASSENGER,
    Colors,
    Group,
    GroupSpec,
    ProcessMemory,
    collect,
    render_json,
    render_text,
    run,
)
from passenger.cli.processes import ProcessEntry
from passenger.common import VERSION
from passenger.common.procfs import MemoryUsage, ProcessGone, ProcFS

FIXTURES = Path(__file__).parents[1] / "fixtures" / "procfs"
MIXED = FIXTURES / "mixed"
ALL = [APACHE, NGINX, PASSENGER]
NOW = datetime.datetime(2026, 11, 27, 16, 42, 13, tzinfo=datetime.UTC)
T = TypeVar("T")


def pids(groups: list[Group]) -> dict[str, list[int]]:
    return {g.spec.key: sorted(p.entry.pid for p in g.processes) for g in groups}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(MIXED, tmp_path / "proc")
    return tmp_path / "proc"


# -- which process goes where ------------------------------------------------------------

def test_each_process_in_its_group_bystanders_and_zombies_left_out() -> None:
    assert pids(collect(ProcFS(MIXED), ALL)) == {
        "apache": [100, 101, 150],
        "nginx": [200, 201],
        # ours (300-305) and real Phusion Passenger's (400-404); not grep/less/vim (500+),
        # not the zombie agent 600.
        "passenger": [300, 301, 302, 303, 304, 305, 400, 401, 402, 403, 404],
    }


@pytest.mark.parametrize(("title", "comm", "group"), [
    ("PassengerWatchdog", "PassengerWatchdo", PASSENGER),
    ("PassengerHelperAgent", "PassengerHelper", PASSENGER),
    ("PassengerLoggingAgent", "PassengerLoggin", PASSENGER),
    ("Passenger WsgiApp: /srv/app", "Passenger WsgiA", PASSENGER),
    ("Passenger AppPreloader: /srv/app", "Passenger AppPr", PASSENGER),
    ("Passenger App: /srv/app", "Passenger App: ", PASSENGER),
    ("/root/venv/bin/python3 /root/venv/bin/PassengerWatchdog", "python3", PASSENGER),
    ("Passenger watchdog", "PassengerAgent", PASSENGER),
    ("Passenger core", "PassengerAgent", PASSENGER),
    ("Passenger AppPreloader: /srv/rails (forking...)", "ruby", PASSENGER),
    ("Passenger RackApp: /srv/rack", "ruby", PASSENGER),
    ("/usr/bin/python3 /usr/share/passenger/helper-scripts/wsgi-loader.py", "python3",
     PASSENGER),
    ("ruby /usr/share/passenger/helper-scripts/rack-loader.rb", "ruby", PASSENGER),
    # a Passenger process that is also a child of Apache belongs to Passenger only
    ("/usr/lib/apache2/PassengerAgent watchdog", "PassengerAgent", PASSENGER),
    ("nginx: master process /usr/sbin/nginx -g daemon on;", "nginx", NGINX),
    ("nginx: worker process", "nginx", NGINX),
    ("nginx: cache manager process", "nginx", NGINX),
    ("nginx: master process /usr/sbin/nginx-debug", "nginx-debug", NGINX),
    ("/usr/sbin/apache2 -k start", "apache2", APACHE),
    ("/usr/sbin/httpd -DFOREGROUND", "httpd", APACHE),
    ("/usr/sbin/httpd.worker", "httpd.worker", APACHE),
    ("/usr/bin/nginx-prometheus-exporter --nginx.scrape-uri=x", "nginx-prometheu", None),
    ("/bin/sh /usr/sbin/apache2ctl start", "apache2ctl", None),
    ("grep Passenger", "grep", None),
    ("tail -f /var/log/PassengerHelperAgent.log", "tail", None),
    ("vim /etc/nginx/nginx.conf", "vim", None),
    ("/usr/bin/python3 /root/dev/bin/passenger-memory-stats", "passenger-memo", None),
    ("ruby /usr/bin/passenger start", "ruby", None),
    ("[kworker/0:1]", "kworker/0:1", None),
])
def test_group_of(title: str, comm: str, group: GroupSpec | None) -> None:
    entry = ProcessEntry(pid=9, ppid=1, comm=comm, zombie=False, title=title)
    assert memory_stats.group_of(entry) is group


def test_excluded_pid_is_left_out() -> None:
    assert 304 not in pids(collect(ProcFS(MIXED), ALL, exclude=[304]))["passenger"]


def test_only_requested_groups_are_read() -> None:
    assert pids(collect(ProcFS(MIXED), [PASSENGER])).keys() == {"passenger"}


# -- Passenger's layout, byte for byte ---------------------------------------------------

ROW = re.compile(r"^(\d+)\s+(?:(\d+)\s+)?([\d.]+) MB\s+([\d.]+) MB\s+(.+)$")


def kb_values(shown: list[float], total: float) -> list[int]:
    """kB figures that print as `shown` (%.1f MB) and add up to `total` (%.2f MB), so
    that Passenger's sample can be rendered from figures like the ones it read."""
    low = [math.ceil((v - 0.05) * 1024) for v in shown]
    high = [math.floor((v + 0.05) * 1024 - 1e-9) for v in shown]
    want = math.ceil((total - 0.005) * 1024)
    values = list(low)
    for i in range(len(values)):
        values[i] += max(0, min(high[i] - low[i], want - sum(values)))
    assert f"{sum(values) / 1024:.2f}" == f"{total:.2f}"
    return values


def parse_reference(text: str) -> tuple[datetime.datetime, list[Group]]:
    """Groups with the PIDs, PPIDs, names and sizes of a captured Passenger run."""
    found = re.search(r"^Date   : (.+)$", text, re.M)
    assert found
    date = datetime.datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S %z")
    groups = []
    specs = {s.title: s for s in ALL}
    for title, body, total_mb in re.findall(
            r"^-+ (\w+ processes) -+\n(.*?)^### Total private dirty RSS: ([\d.]+) MB",
            text, re.M | re.S):
        rows = [m.groups() for m in map(ROW.match, body.splitlines()) if m]
        total = float(total_mb)
        private = kb_values([float(r[3]) for r in rows], total)
        group = Group(specs[title])
        for (pid, ppid, vm, _, name), priv in zip(rows, private, strict=True):
            entry = ProcessEntry(pid=int(pid), ppid=int(ppid or 1), comm="x", zombie=False,
                                 title=name)
            usage = MemoryUsage(vm_size_kb=round(float(vm) * 1024), threads=1,
                                smaps={"Private_Dirty": priv})
            group.processes.append(ProcessMemory(entry, usage))
        groups.append(group)
    return date, groups


def captured_runs(name: str) -> list[str]:
    """Each `$ passenger-memory-stats ...` run of a reference capture, without the
    command line and the exit status line."""
    text = (FIXTURES / name).read_text()
    runs = re.findall(r"^\$ passenger-memory-stats[^\n]*\n(.*?)^\[exit status: 0\]",
                      text, re.M | re.S)
    assert runs
    return [run.replace("Version: 6.0.17", f"Version: {VERSION}") for run in runs]


@pytest.mark.parametrize("name", ["passenger-6.0.17-output.txt",
                                  "passenger-6.0.17-output-mixed.txt"])
def test_same_figures_print_exactly_as_passenger_6(name: str) -> None:
    for expected in captured_runs(name):
        date, groups = parse_reference(expected)
        assert render_text(groups, date, euid=0, colors=Colors()) == expected


def test_empty_tables_print_as_passenger_6(tmp_path: Path) -> None:
    # captured from /usr/sbin/passenger-memory-stats 6.0.17 on a machine running none
    expected = f"""\
Version: {VERSION}
Date   : 2026-11-27 16:42:13 +0000

------- Apache processes --------
### Processes: 0
### Total private dirty RSS: 0.00 MB


-------- Nginx processes --------
### Processes: 0
### Total private dirty RSS: 0.00 MB


--- Passenger processes ---
### Processes: 0
### Total private dirty RSS: 0.00 MB
"""
    # A machine always runs something (psutil.pids() fails on an empty /proc): init.
    shutil.copytree(MIXED / "1", tmp_path / "proc" / "1")
    groups = collect(ProcFS(tmp_path / "proc"), ALL)
    assert render_text(groups, NOW, euid=0, colors=Colors()) == expected


TOUCHER = ("/usr/lib/passenger/support-binaries/PassengerAgent temp-dir-toucher "
           "/tmp/passenger-standalone.mz8hb0 --cleanup")


def test_mixed_tree_full_output() -> None:
    text = render_text(collect(ProcFS(MIXED), ALL), NOW, euid=0, colors=Colors())
    assert text == f"""\
Version: {VERSION}
Date   : 2026-11-27 16:42:13 +0000

--------- Apache processes ---------
PID  PPID  VMSize     Private  Name
------------------------------------
100  1     6.4 MB     0.4 MB   /usr/sbin/apache2 -k start
101  100   1184.1 MB  0.6 MB   /usr/sbin/apache2 -k start
150  1     10.0 MB    0.5 MB   /usr/sbin/httpd.worker -DFOREGROUND
### Processes: 3
### Total private dirty RSS: 1.50 MB


-------- Nginx processes ---------
PID  PPID  VMSize   Private  Name
----------------------------------
200  1     10.2 MB  0.2 MB   nginx: master process /usr/sbin/nginx
201  200   11.8 MB  0.5 MB   nginx: worker process
### Processes: 2
### Total private dirty RSS: 0.70 MB


---- Passenger processes -----
PID  VMSize     Private  Name
------------------------------
300  10.0 MB    2.0 MB   PassengerWatchdog
301  10.0 MB    4.0 MB   PassengerHelperAgent
302  10.0 MB    1.0 MB   PassengerLoggingAgent
303  10.0 MB    8.0 MB   Passenger AppPreloader: /srv/my app (staging)
304  10.0 MB    0.5 MB   Passenger WsgiApp: /srv/my app (staging)
305  10.0 MB    2.9 MB   Passenger App: /srv/node-app
400  291.9 MB   2.1 MB   Passenger watchdog
401  1031.3 MB  2.8 MB   Passenger core
402  17.6 MB    6.8 MB   /usr/bin/python3 /usr/share/passenger/helper-scripts/wsgi-loader.py
403  25.8 MB    1.4 MB   {TOUCHER}
404  10.0 MB    40.0 MB  Passenger RubyApp: /srv/rails (production)
### Processes: 11
### Total private dirty RSS: 71.53 MB
"""


def test_long_title_bar_when_title_wider_than_header() -> None:
    rows: list[list[str]] = []
    out = memory_stats.render_table("A title much longer than its columns", ["PID"], rows,
                                    Colors())
    assert out == "\n--- A title much longer than its columns ---\n"


def test_colours_only_on_a_terminal() -> None:
    groups = collect(ProcFS(MIXED), [PASSENGER])
    plain = render_text(groups, NOW, euid=0, colors=Colors())
    coloured = render_text(groups, NOW, euid=0, colors=Colors.for_terminal(True))
    assert "\033" not in plain
    assert "\033[44m\033[1m\033[33m\n---- Passenger processes -----\n\033[37mPID" in coloured
    assert re.sub(r"\033\[\d+m", "", coloured) == plain


# -- values that cannot be read ----------------------------------------------------------

def make_unreadable(tree: Path, pid: int) -> None:
    """As root, a mode-000 file is still readable; a directory in the file's place is
    not readable by anyone (EISDIR), which ProcFS treats as it treats EACCES. The real
    EACCES is tested in tests/common (as nobody) and tests/integration (real /proc)."""
    for name in ("smaps_rollup", "smaps"):
        path = tree / str(pid) / name
        if path.exists():
            path.unlink()
            path.mkdir()


def test_unreadable_private_dirty_is_a_question_mark_with_the_sudo_warning(tree: Path) -> None:
    make_unreadable(tree, 100)
    groups = collect(ProcFS(tree), ALL)
    text = render_text(groups, NOW, euid=1000, colors=Colors())
    assert "\n100  1     6.4 MB     ?        /usr/sbin/apache2 -k start\n" in text
    assert "### Total private dirty RSS: 1.10 MB (?)\n" in text
    assert "### Total private dirty RSS: 0.70 MB\n" in text  # nginx is complete
    assert text.endswith(
        "### Total private dirty RSS: 71.53 MB\n"
        "*** WARNING: Please run this tool with sudo. Otherwise the private dirty RSS "
        "(a reliable metric for real memory usage) of processes cannot be determined.\n")
    assert text.count("WARNING") == 1


def test_as_root_unreadable_is_marked_but_no_sudo_advice(tree: Path) -> None:
    make_unreadable(tree, 100)
    text = render_text(collect(ProcFS(tree), ALL), NOW, euid=0, colors=Colors())
    assert "(?)" in text and "WARNING" not in text


def test_unreadable_status_shows_vm_size_as_question_mark(tree: Path) -> None:
    (tree / "201" / "status").unlink()
    (tree / "201" / "status").mkdir()
    text = render_text(collect(ProcFS(tree), [NGINX]), NOW, euid=0, colors=Colors())
    assert "\n201  200   ?        0.5 MB   nginx: worker process\n" in text


def test_warning_only_for_groups_shown(tree: Path) -> None:
    make_unreadable(tree, 100)
    text = render_text(collect(ProcFS(tree), [NGINX, PASSENGER]), NOW, euid=1000,
                       colors=Colors())
    assert "WARNING" not in text


# -- processes that vanish while being read ----------------------------------------------

def vanish_after_reading(monkeypatch: pytest.MonkeyPatch, tree: Path,
                         after: dict[int, str]) -> None:
    """Deletes a process's directory right after one of its files was opened (the open
    file still reads whole), as the kernel does when the process exits and is reaped
    between two of our reads. psutil opens with open(), ProcFS with os.open()."""
    targets = {str(tree / str(pid) / name): tree / str(pid) for pid, name in after.items()}

    def hooked(real_open: Callable[..., T]) -> Callable[..., T]:
        def opener(path: Any, *args: Any, **kwargs: Any) -> T:
            opened = real_open(path, *args, **kwargs)
            gone = targets.pop(os.fsdecode(path), None) if isinstance(path, str) else None
            if gone is not None:
                shutil.rmtree(gone)
            return opened
        return opener

    monkeypatch.setattr(builtins, "open", hooked(builtins.open))
    monkeypatch.setattr(os, "open", hooked(os.open))


@pytest.mark.parametrize("after", ["stat", "cmdline", "status", "smaps_rollup"])
def test_process_vanishing_mid_read_is_skipped(tree: Path, after: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    vanish_after_reading(monkeypatch, tree, {301: after, 101: after, 201: after})
    found = pids(collect(ProcFS(tree), ALL))
    monkeypatch.undo()
    if after == "smaps_rollup":  # all figures were read before it went: still listed
        assert 301 in found["passenger"]
    else:
        assert 301 not in found["passenger"]
        assert 101 not in found["apache"] and 201 not in found["nginx"]
    assert 300 in found["passenger"] and 100 in found["apache"] and 200 in found["nginx"]


def test_process_listed_but_already_gone(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listed = psutil.pids
    monkeypatch.setattr(psutil, "pids", lambda: [*listed(), 99999])

    assert 99999 not in pids(collect(ProcFS(tree), ALL))["passenger"]
    with pytest.raises(ProcessGone):
        ProcFS(tree).memory(99999)


# -- options -----------------------------------------------------------------------------

def test_no_apache_no_nginx_spacing_as_passenger(tree: Path) -> None:
    text = run(["--no-apache", "--no-nginx"], ProcFS(tree), euid=0, tty=False)
    assert re.match(r"Version: .*\nDate   : .*\n\n\n---- Passenger processes -----\n",
                    text)
    assert "Apache" not in text and "Nginx" not in text


def test_no_nginx_keeps_apache_then_passenger(tree: Path) -> None:
    text = run(["--no-nginx"], ProcFS(tree), euid=0, tty=False)
    assert "\n### Total private dirty RSS: 1.50 MB\n\n\n---- Passenger processes" in text
    assert "Nginx" not in text


def test_pss_adds_pss_and_shared_columns_and_total(tree: Path) -> None:
    text = run(["--pss", "--no-apache", "--no-nginx"], ProcFS(tree), euid=0, tty=False)
    lines = text.splitlines()
    assert lines[5] == "PID  VMSize     Private  PSS      Shared   Name"
    # The preloader and its worker share 6 MB and 10 MB; PSS splits the shared pages.
    assert "303  10.0 MB    8.0 MB   8.8 MB   6.0 MB   Passenger AppPreloader: /srv/my app " \
           "(staging)" in lines
    assert "304  10.0 MB    0.5 MB   3.4 MB   10.0 MB  Passenger WsgiApp: /srv/my app " \
           "(staging)" in lines
    pss_total = sum(p.pss_kb or 0 for p in collect(ProcFS(tree), [PASSENGER])[0].processes)
    assert lines[-1] == f"### Total PSS: {pss_total / 1024:.2f} MB"
    assert lines[-2] == "### Total private dirty RSS: 71.53 MB"


def test_json_has_every_figure(tree: Path) -> None:
    make_unreadable(tree, 100)
    doc = json.loads(run(["--json"], ProcFS(tree), euid=1000, tty=False))
    assert doc["version"] == VERSION
    assert list(doc["groups"]) == ["apache", "nginx", "passenger"]
    apache = doc["groups"]["apache"]
    assert apache["process_count"] == 3
    assert apache["total_private_dirty_kb"] == 614 + 512
    assert apache["total_private_dirty_complete"] is False
    assert apache["processes"][0] == {
        "pid": 100, "ppid": 1, "name": "/usr/sbin/apache2 -k start", "comm": "apache2",
        "threads": 1, "vm_size_kb": 6554, "rss_kb": None, "private_dirty_kb": None,
        "private_clean_kb": None, "pss_kb": None, "shared_kb": None,
        "shared_clean_kb": None, "shared_dirty_kb": None, "swap_kb": None}
    worker = doc["groups"]["passenger"]["processes"][4]
    assert worker == {
        "pid": 304, "ppid": 303, "name": "Passenger WsgiApp: /srv/my app (staging)",
        "comm": "Passenger WsgiA", "threads": 1, "vm_size_kb": 10240,
        "rss_kb": 512 + 4096 + 6144, "private_dirty_kb": 512, "private_clean_kb": 0,
        "pss_kb": 3500, "shared_kb": 10240, "shared_clean_kb": 4096,
        "shared_dirty_kb": 6144, "swap_kb": 0}
    assert doc["warning"].startswith("*** WARNING: Please run this tool with sudo.")


def test_json_respects_group_options_and_has_no_warning_when_complete() -> None:
    doc = json.loads(render_json(collect(ProcFS(MIXED), [NGINX]), NOW, euid=1000))
    assert list(doc["groups"]) == ["nginx"]
    assert doc["warning"] is None
    assert doc["date"] == "2026-11-27T16:42:13+00:00"


def test_help_is_the_usage_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run(["--help"], ProcFS(MIXED))
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    assert out.startswith("Usage: passenger-memory-stats [-h|--help] [--no-apache] "
                          "[--no-nginx]")
    assert "--no-apache                  Do not display the Apache statistics." in out


def test_unknown_option_exits_non_zero() -> None:
    with pytest.raises(SystemExit) as exc:
        run(["--bogus"], ProcFS(MIXED))
    assert exc.value.code not in (0, None)
