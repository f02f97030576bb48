"""The CLI's process table (psutil, run on the fixture trees of tests/fixtures/procfs
through psutil.PROCFS_PATH, and on the real /proc), liveness, and the PID file check
of `passenger stop`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from passenger.cli import processes
from passenger.cli.processes import ProcessEntry, entries

MIXED = Path(__file__).parents[1] / "fixtures" / "procfs" / "mixed"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A private copy of the mixed tree, for tests that damage it."""
    shutil.copytree(MIXED, tmp_path / "proc")
    return tmp_path / "proc"


def by_pid(root: Path) -> dict[int, ProcessEntry]:
    return {e.pid: e for e in entries(root)}


def test_every_process_by_pid_and_nothing_else() -> None:
    pids = [e.pid for e in entries(MIXED)]
    assert pids == sorted(int(p.name) for p in MIXED.iterdir() if p.name.isdigit())
    assert 1 in pids and 404 in pids  # and "uptime" is not a process


def test_psutil_is_pointed_back_at_proc_afterwards() -> None:
    entries(MIXED)
    assert psutil.PROCFS_PATH == "/proc"


def test_entry_title_keeps_spaces_and_parentheses() -> None:
    assert by_pid(MIXED)[304] == ProcessEntry(
        pid=304, ppid=303, comm="Passenger WsgiA", zombie=False,
        title="Passenger WsgiApp: /srv/my app (staging)")


def test_comm_with_spaces_and_parentheses_ends_at_last_paren() -> None:
    assert by_pid(MIXED)[303].comm == "x) (y z"


def test_comm_is_the_kernels_not_psutils_longer_name() -> None:
    # psutil.Process(302).name() is "PassengerLoggingAgent", from the command line.
    assert by_pid(MIXED)[302].comm == "PassengerLoggin"


def test_titles_nul_separated_and_padded() -> None:
    found = by_pid(MIXED)
    assert found[100].title == "/usr/sbin/apache2 -k start"
    assert found[200].title == "nginx: master process /usr/sbin/nginx"  # NUL padding
    assert found[400].title == "Passenger watchdog"  # space padding, as Passenger 6


def test_kernel_thread_title_is_comm_in_brackets() -> None:
    assert by_pid(MIXED)[2].title == "[kthreadd]"


def test_zombies_are_marked() -> None:
    assert {e.pid for e in entries(MIXED) if e.zombie} == {600, 601}


def test_keep_judges_before_the_ppid_is_read() -> None:
    seen: list[ProcessEntry] = []

    def keep(entry: ProcessEntry) -> bool:
        seen.append(entry)
        return entry.pid in (201, 304)

    assert [(e.pid, e.ppid) for e in entries(MIXED, keep)] == [(201, 200), (304, 303)]
    assert len(seen) == len(entries(MIXED)) and {e.ppid for e in seen} == {0}


def test_vanished_process_is_left_out(tree: Path) -> None:
    shutil.rmtree(tree / "304")
    assert 304 not in by_pid(tree) and 303 in by_pid(tree)


def test_undecodable_bytes_are_replaced(tree: Path) -> None:
    (tree / "304" / "cmdline").write_bytes(b"Passenger WsgiApp: /srv/caf\xe9\0")
    assert by_pid(tree)[304].title == "Passenger WsgiApp: /srv/caf\ufffd"


def test_real_proc_lists_this_process() -> None:
    me = by_pid(Path("/proc"))[os.getpid()]
    assert me.ppid == os.getppid() and not me.zombie
    assert me.title == " ".join(psutil.Process().cmdline())


# -- liveness and the PID file check ----------------------------------------------------

@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A process titled as our watchdog."""
    proc = subprocess.Popen([sys.executable, "-c", "import setproctitle, time; "
                             "setproctitle.setproctitle('PassengerWatchdog'); "
                             "time.sleep(60)"])
    deadline = time.monotonic() + 10
    while psutil.Process(proc.pid).cmdline()[:1] != ["PassengerWatchdog"]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    yield proc
    proc.kill()
    proc.wait()


def test_alive_until_exited_and_a_zombie_is_not(child: subprocess.Popen[bytes]) -> None:
    assert processes.alive(child.pid)
    child.kill()
    deadline = time.monotonic() + 10
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:  # not reaped yet
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not processes.alive(child.pid)
    child.wait()
    assert not processes.alive(child.pid)


def test_pid_file_names_our_watchdog_only_if_written_after_it_started(
        child: subprocess.Popen[bytes], tmp_path: Path) -> None:
    path = tmp_path / "passenger.pid"
    path.write_text(f"{child.pid}\n")
    assert processes.names_our_watchdog(str(path), child.pid)
    started = psutil.Process(child.pid).create_time()
    os.utime(path, (started - 60, started - 60))  # a stale file, its PID reused since
    assert not processes.names_our_watchdog(str(path), child.pid)
    assert not processes.names_our_watchdog(str(tmp_path / "missing"), child.pid)


def test_another_program_is_not_our_watchdog(tmp_path: Path) -> None:
    path = tmp_path / "passenger.pid"
    path.write_text(f"{os.getpid()}\n")
    assert not processes.names_our_watchdog(str(path), os.getpid())
