"""Process hygiene, per test and for the whole run.

After each test, every process it started must be gone: a process that appeared during
the test and is still running afterwards is given a few seconds to exit, then killed,
and the test fails naming it. "Started by the test" = a descendant of this pytest process
that does not descend from one that was already running when the test began (a server a
module-scoped fixture keeps for several tests may spawn and replace processes), or, for a
process that was re-parented away (a daemonized or orphaned one), one that carries this
session's marker: PASSENGER_TEST_SESSION in its environment, or a file open in an
instance registry this session made (our agents' titles overwrite their environment).

After the whole run, no process with a Passenger title that this session started may be
left; any found are killed and the run fails. Processes of parallel runs on the same
machine carry another marker and do not count.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import psutil
import pytest

from support import REGISTRY_PREFIX, SESSION_MARKER, has_passenger_title

GRACE = 5.0  # seconds a process that is on its way out gets before it counts as leaked
_session_dirs: list[str] = [REGISTRY_PREFIX]


def _open_paths(pid: int) -> list[str]:
    """What the process's descriptors point at (FIFOs too, which psutil's open_files()
    leaves out), and its working directory."""
    paths = []
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                paths.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    with contextlib.suppress(OSError):
        paths.append(os.readlink(f"/proc/{pid}/cwd"))
    return paths


def started_by_this_session(proc: psutil.Process) -> bool:
    try:
        if proc.environ().get("PASSENGER_TEST_SESSION") == SESSION_MARKER:
            return True
    except psutil.Error:
        return False
    return any(path.startswith(tuple(_session_dirs)) for path in _open_paths(proc.pid))


def describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {' '.join(' '.join(proc.cmdline()).split())}"
    except psutil.Error:
        return f"{proc.pid} (exited)"


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _ancestors(proc: psutil.Process) -> list[int]:
    try:
        return [p.pid for p in proc.parents()]
    except psutil.Error:
        return []


def started_during_the_test(before: set[int]) -> list[psutil.Process]:
    """Processes that are new since `before` (the PIDs then), still running, and this
    test's: see the module's docstring."""
    new = set(psutil.pids()) - before
    if not new:
        return []
    me = os.getpid()
    found = []
    for pid in new:
        try:
            proc = psutil.Process(pid)
        except psutil.Error:
            continue
        if not _running(proc):
            continue
        ancestors = _ancestors(proc)
        if me in ancestors:
            # Ours, unless a process between us and it was there before the test (a
            # module-scoped server replacing one of its app processes, say).
            if not set(ancestors[:ancestors.index(me)]) & before:
                found.append(proc)
        elif started_by_this_session(proc):  # re-parented: daemonized or orphaned
            found.append(proc)
    return found


@pytest.fixture(scope="session", autouse=True)
def _session_dirs_known(tmp_path_factory: pytest.TempPathFactory) -> None:
    _session_dirs.append(str(tmp_path_factory.getbasetemp()))


@pytest.fixture(autouse=True)
def no_leaked_process(request: pytest.FixtureRequest) -> Iterator[None]:
    before = set(psutil.pids())
    yield
    suspects = started_during_the_test(before)
    if not suspects:
        return
    _, alive = psutil.wait_procs(suspects, timeout=GRACE)
    alive = [p for p in alive if _running(p)]
    if not alive:
        return
    names = ", ".join(map(describe, alive))
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    pytest.fail(f"{request.node.nodeid} left processes running {GRACE:g} s after it "
                f"ended (killed now): {names}", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def no_leftover_processes() -> Iterator[None]:
    yield
    leftovers = [p for p in psutil.process_iter()
                 if has_passenger_title(p) and started_by_this_session(p)]
    # An exiting process may still be on its way out: give it a moment.
    _, alive = psutil.wait_procs(leftovers, timeout=3)
    alive = [p for p in alive if has_passenger_title(p)]
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    assert not alive, "processes left running after the suite: " + ", ".join(
        map(describe, alive))

