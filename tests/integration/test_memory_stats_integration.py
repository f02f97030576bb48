"""passenger-memory-stats against the real /proc: real nginx and Apache on loopback
ports, a real instance of ours, processes that allocate memory, agents killed with
SIGKILL, an unprivileged user, and processes exiting while the tool reads them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docopt  # noqa: F401 (imported before any fork: the unprivileged child cannot)
import psutil
import pytest
from webservers import APACHE, NGINX, Apache, Nginx, WebServer, installed, running

from passenger.cli.memory_stats import run
from passenger.common.procfs import ProcFS
from support import BIN, PassengerServer, as_nobody, running_server, wait_for

TOOL = str(BIN / "passenger-memory-stats")
MB = 1024 * 1024

needs_nginx = pytest.mark.skipif(not installed(NGINX), reason="nginx not installed "
                                 "(.ci/run installs it)")
needs_apache = pytest.mark.skipif(not installed(APACHE), reason="apache2 not installed "
                                  "(.ci/run installs it)")


def tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TOOL, *args], capture_output=True, text=True, timeout=30,
                          check=False)


def tool_json(*args: str) -> dict[str, Any]:
    result = tool("--json", *args)
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def by_pid(doc: dict[str, Any], group: str) -> dict[int, dict[str, Any]]:
    return {p["pid"]: p for p in doc["groups"][group]["processes"]}


def listed_pids(doc: dict[str, Any]) -> dict[str, set[int]]:
    return {key: {p["pid"] for p in g["processes"]} for key, g in doc["groups"].items()}


class Child:
    """A Python child that sets its title, says "ready", then runs commands read from
    stdin (one line each, answered "ok"); killed and reaped by `stop()`."""

    PROGRAM = r"""
import sys, setproctitle
setproctitle.setproctitle(sys.argv[1])
held = []
print("ready", flush=True)
for line in sys.stdin:
    n = int(line)
    buf = bytearray(n)
    for i in range(0, n, 4096):  # touch every page: private and dirty
        buf[i] = 1
    held.append(buf)
    print("ok", flush=True)
"""

    def __init__(self, title: str) -> None:
        self.title = title
        self.proc = subprocess.Popen([sys.executable, "-c", self.PROGRAM, title],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.expect("ready")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, word: str, timeout: float = 10.0) -> None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if line != word:
            self.stop()
            raise TimeoutError(f"child {self.title!r} said {line!r}, not {word!r}")

    def allocate(self, nbytes: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{nbytes}\n".encode())
        self.proc.stdin.flush()
        self.expect("ok", timeout=30)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


@contextlib.contextmanager
def children(*titles: str) -> Iterator[list[Child]]:
    started: list[Child] = []
    try:
        for title in titles:
            started.append(Child(title))
        yield started
    finally:
        for child in started:
            child.stop()


@pytest.fixture
def nginx() -> Iterator[WebServer]:
    if not installed(NGINX):
        pytest.skip("nginx not installed (.ci/run installs it)")
    with running(Nginx(workers=2)) as server:
        yield server


@pytest.fixture
def apache() -> Iterator[WebServer]:
    if not installed(APACHE):
        pytest.skip("apache2 not installed (.ci/run installs it)")
    with running(Apache(workers=2)) as server:
        yield server


# -- 1. each server in its own group ----------------------------------------------------

def check_server_group(doc: dict[str, Any], group: str, server: WebServer,
                       master_title: str, worker_title: str) -> None:
    listed = by_pid(doc, group)
    master = listed[server.master_pid]
    assert master["ppid"] == os.getpid()  # we started it in the foreground
    assert re.fullmatch(master_title, master["name"]), master["name"]
    workers = server.worker_pids()
    assert len(workers) == 2
    for pid in workers:
        assert listed[pid]["ppid"] == server.master_pid
        assert re.fullmatch(worker_title, listed[pid]["name"]), listed[pid]["name"]
    for pid in (server.master_pid, *workers):
        assert listed[pid]["private_dirty_kb"] > 0
        assert listed[pid]["vm_size_kb"] > 0


def test_nginx_apache_and_ours_each_in_their_own_group(nginx: WebServer,
                                                      apache: WebServer) -> None:
    # A stand-in with our app title, beside the real servers; a real instance of ours
    # (tests/support.py's running_server) is checked in the next test.
    with children("Passenger WsgiApp: /tmp/x") as (app,):
        doc = tool_json()
        text = tool().stdout
    check_server_group(doc, "nginx", nginx, rf"nginx: master process {NGINX} -p .*",
                       "nginx: worker process")
    check_server_group(doc, "apache", apache, rf"{APACHE} -f \S+/apache2.conf -DFOREGROUND",
                       rf"{APACHE} -f \S+/apache2.conf -DFOREGROUND")
    pids = listed_pids(doc)
    assert app.pid in pids["passenger"]
    assert by_pid(doc, "passenger")[app.pid]["name"] == "Passenger WsgiApp: /tmp/x"
    assert app.pid not in pids["nginx"] | pids["apache"]
    assert not (pids["nginx"] & pids["apache"])

    # The text tables hold the same rows, in Passenger's layout.
    for pid in (nginx.master_pid, *nginx.worker_pids(), apache.master_pid):
        assert re.search(rf"^{pid} +\d+ +[\d.]+ MB +[\d.]+ MB +\S", text, re.M), pid
    assert re.search(rf"^{app.pid} +[\d.]+ MB +[\d.]+ MB +Passenger WsgiApp: /tmp/x$",
                     text, re.M)
    assert "### Processes: " in text and "WARNING" not in text


def instance_titles(server: PassengerServer) -> dict[int, tuple[int, str]]:
    """PID -> (PPID, title) of the watchdog and every descendant, as ps shows them."""
    procs = [psutil.Process(server.watchdog_pid)]
    procs += procs[0].children(recursive=True)
    found = {}
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            found[proc.pid] = (proc.ppid(), " ".join(proc.cmdline()).rstrip())
    return found


def test_real_instance_of_ours_in_the_passenger_group() -> None:
    with running_server() as server:
        wait_for(lambda: server.app_pids(), 10, message="an app process")
        apps = server.app_pids()
        helper = server.agent_pid("PassengerHelperAgent")
        before = instance_titles(server)
        doc = tool_json()
        after = instance_titles(server)
    # Judge the tool on the processes that did not change while it read.
    stable = {pid: before[pid] for pid in before if after.get(pid) == before[pid]}
    listed = by_pid(doc, "passenger")
    assert stable[server.watchdog_pid][1] == "PassengerWatchdog"
    assert stable[helper] == (server.watchdog_pid, "PassengerHelperAgent")
    for pid in apps:
        assert stable[pid][1].startswith("Passenger WsgiApp: ")
    for pid, (ppid, title) in stable.items():  # every process of the instance
        assert (listed[pid]["ppid"], listed[pid]["name"]) == (ppid, title)
        assert listed[pid]["private_dirty_kb"] > 0
    others = listed_pids(doc)["nginx"] | listed_pids(doc)["apache"]
    assert not others & set(before)


# -- 2. the private dirty figure follows real allocations -------------------------------

@pytest.mark.parametrize("megabytes", [32, 128])
def test_private_dirty_grows_by_what_a_process_allocates_and_touches(megabytes: int) -> None:
    with children("Passenger WsgiApp: /tmp/memtest") as (child,):
        before = by_pid(tool_json("--no-apache", "--no-nginx"), "passenger")[child.pid]
        child.allocate(megabytes * MB)
        after = by_pid(tool_json("--no-apache", "--no-nginx"), "passenger")[child.pid]
    grown_mb = (after["private_dirty_kb"] - before["private_dirty_kb"]) / 1024
    assert grown_mb == pytest.approx(megabytes, rel=0.10)
    assert after["vm_size_kb"] - before["vm_size_kb"] >= megabytes * 1024 * 0.9


# -- 3. agents killed: the tool still works ----------------------------------------------

def test_agents_killed_survivors_listed_exit_0() -> None:
    titles = ["PassengerWatchdog", "PassengerHelperAgent", "PassengerLoggingAgent",
              "Passenger WsgiApp: /tmp/survivor", "Passenger WsgiApp: /tmp/survivor"]
    with children(*titles) as procs:
        agents, apps = procs[:3], procs[3:]
        for agent in agents:
            os.kill(agent.pid, signal.SIGKILL)
        # Read while they die (unreaped: zombies) and again once they are reaped.
        during = tool()
        doc_during = tool_json()
        for agent in agents:
            agent.proc.wait(5)
        after = tool()
        doc_after = tool_json()
    for result in (during, after):
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
    for doc in (doc_during, doc_after):
        listed = listed_pids(doc)["passenger"]
        assert {a.pid for a in apps} <= listed
        assert not {a.pid for a in agents} & listed
    for app in apps:
        assert re.search(rf"^{app.pid} .* Passenger WsgiApp: /tmp/survivor$", after.stdout,
                         re.M)


def test_real_instance_agents_killed_tool_exits_0() -> None:
    with running_server() as server:
        wait_for(lambda: server.app_pids(), 10, message="an app process")
        titles = instance_titles(server)
        agents = [pid for pid, (_, title) in titles.items() if title.startswith(
            ("PassengerWatchdog", "PassengerHelperAgent", "PassengerLoggingAgent"))]
        assert len(agents) == 3  # the watchdog and its two agents
        server.remember_descendants()
        for pid in agents:
            os.kill(pid, signal.SIGKILL)
        result = tool()
        doc = tool_json()
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert not set(agents) & listed_pids(doc)["passenger"]
    assert "### Processes: " in result.stdout


# -- the unprivileged view of another user's processes ----------------------------------

@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start root-owned nginx")
def test_unprivileged_user_sees_question_marks_and_the_sudo_warning(
        nginx: WebServer) -> None:
    text = as_nobody(lambda: run(["--no-apache"], ProcFS(), tty=False))
    assert re.search(rf"^{nginx.master_pid} +{os.getpid()} +[\d.]+ MB +\? +nginx: master",
                     text, re.M), text
    assert re.search(r"### Total private dirty RSS: [\d.]+ MB \(\?\)\n", text), text
    assert text.endswith("*** WARNING: Please run this tool with sudo. Otherwise the private "
                         "dirty RSS (a reliable metric for real memory usage) of processes "
                         "cannot be determined.\n")


# -- processes exiting while the tool reads ----------------------------------------------

CHURN = r"""
import os, sys, time, setproctitle
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    pids = []
    for _ in range(20):
        pid = os.fork()
        if pid == 0:
            setproctitle.setproctitle("Passenger WsgiApp: /tmp/churn")
            time.sleep(0.02)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
"""


def test_processes_exiting_mid_read_never_break_the_tool() -> None:
    churn = subprocess.Popen([sys.executable, "-c", CHURN, "3"])
    try:
        wait_for(lambda: psutil.Process(churn.pid).children(), 5,
                 message="the churner forking")
        procfs = ProcFS()
        runs = 0
        churners_seen = []
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            doc = json.loads(run(["--json"], procfs))
            group = doc["groups"]["passenger"]
            assert group["process_count"] == len(group["processes"])
            # The churner's children: at most one batch of 20 alive at once, each listed
            # whole with the title it set (never half-read), nothing else of the churner.
            ours = [p for p in group["processes"] if p["ppid"] == churn.pid]
            assert len(ours) <= 20
            assert all(p["name"] == "Passenger WsgiApp: /tmp/churn" for p in ours), ours
            assert churn.pid not in {p["pid"] for p in group["processes"]}
            churners_seen.append(len(ours))
            runs += 1
        assert runs > 10
        assert max(churners_seen) > 0, f"never saw the churned children: {churners_seen}"
    finally:
        try:  # it stops by itself after 3 s, having reaped all its children
            churn.wait(10)
        except subprocess.TimeoutExpired:
            churn.kill()
            churn.wait(5)


# -- agreement with real Phusion Passenger's tool, where it is installed -----------------

PHUSION_TOOL = "/usr/sbin/passenger-memory-stats"


@needs_nginx
@needs_apache
@pytest.mark.skipif(not Path(PHUSION_TOOL).exists(),
                    reason=f"{PHUSION_TOOL} missing: the Debian package passenger is not "
                    "installed (.ci/run installs it)")
def test_same_apache_and_nginx_rows_as_phusion_passenger(nginx: WebServer,
                                                         apache: WebServer) -> None:
    def rows(text: str, title: str) -> set[tuple[str, str, str]]:
        """The rows of one section: from its title line to the next title line."""
        after_title = text.split(f" {title} ")[1]
        section = re.split(r"^-+ \S[^\n]* -+$", after_title, flags=re.M)[0]
        return {(m[1], m[2], m[3]) for m in
                re.finditer(r"^(\d+) +(\d+) +[\d.]+ MB +\S+(?: MB)? +(.+)$", section, re.M)}

    # Their tool looks for Apache on PATH only (a non-root PATH lacks /usr/sbin) and
    # asks for HTTPD when it is not there; ours finds it either way.
    theirs = subprocess.run([PHUSION_TOOL], capture_output=True, text=True, timeout=30,
                            check=True, env={**os.environ, "HTTPD": APACHE}).stdout
    ours = tool().stdout
    for title in ("Apache processes", "Nginx processes"):
        assert rows(ours, title) == rows(theirs, title)
        assert rows(ours, title)
