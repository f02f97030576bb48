"""Wall time of `passenger-memory-stats` on a busy process table (a benchmark, not a test).

Starts N extra idle processes (default 1,000 `sleep`s), a few processes with our titles,
and, when installed, real nginx and Apache on loopback ports; then times, in turns:
our tool (text and --json), `ps -eo pid,ppid,vsz,rss,args`, and real Phusion Passenger's
`passenger-memory-stats` when it is installed (Debian package `passenger`). The goal is
to be no slower than Passenger's tool. Everything started is killed and reaped at exit.

    python benchmarks/memory_stats_bench.py [--processes 1000] [--runs 21]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from webservers import APACHE, NGINX, Apache, Nginx, WebServer, installed  # noqa: E402

BIN = Path(sys.executable).parent
OURS = str(BIN / "passenger-memory-stats")
TITLES = ["PassengerWatchdog", "PassengerHelperAgent", "PassengerLoggingAgent",
          "Passenger WsgiApp: /srv/bench", "Passenger WsgiApp: /srv/bench"]
STAND_IN = "import setproctitle, sys, time; setproctitle.setproctitle(sys.argv[1]); " \
           "time.sleep(3600)"


def phusion_tool() -> str | None:
    """Real Passenger's tool, never ours (ours may come first on PATH)."""
    for candidate in ("/usr/sbin/passenger-memory-stats", "/usr/bin/passenger-memory-stats"):
        if os.access(candidate, os.X_OK):
            return candidate
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if Path(p).resolve() != BIN.resolve())
    return shutil.which("passenger-memory-stats", path=path)


@contextlib.contextmanager
def background(count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    servers: list[WebServer] = []
    try:
        for _ in range(count):
            procs.append(subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL))
        for title in TITLES:
            procs.append(subprocess.Popen([sys.executable, "-c", STAND_IN, title]))
        if os.geteuid() == 0:
            for server_cls, binary in ((Nginx, NGINX), (Apache, APACHE)):
                if installed(binary):
                    servers.append(server_cls(workers=2).start())
        time.sleep(0.5)  # let the stand-ins set their titles
        yield procs
    finally:
        for server in servers:
            server.stop()
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        for proc in procs:
            proc.wait()


def time_runs(argv: list[str], runs: int, warmup: int = 2) -> list[float]:
    """Wall times in ms of `argv`, output discarded, after `warmup` untimed runs."""
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        result = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                timeout=60, check=False)
        elapsed = (time.perf_counter() - start) * 1000
        if result.returncode != 0:
            raise RuntimeError(f"{argv} exited {result.returncode}: {result.stderr!r}")
        if i >= warmup:
            times.append(elapsed)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()

    commands: list[tuple[str, list[str]]] = [
        ("python startup (python -I -c pass)", [sys.executable, "-I", "-c", "pass"]),
        ("ours: passenger-memory-stats", [OURS]),
        ("ours: passenger-memory-stats --json", [OURS, "--json"]),
        ("ps -eo pid,ppid,vsz,rss,args", ["ps", "-eo", "pid,ppid,vsz,rss,args"]),
    ]
    phusion = phusion_tool()
    if phusion:
        commands.append((f"Phusion Passenger: {phusion}", [phusion]))

    with background(args.processes):
        total = sum(1 for e in os.listdir("/proc") if e.isdigit())
        print(f"processes on the machine: {total} ({args.processes} extra idle), "
              f"{args.runs} timed runs each, wall time in ms")
        print(f"{'command':<58} {'median':>8} {'min':>8} {'p90':>8}")
        medians = {}
        # Interleave the commands run by run, so drift hits all of them alike.
        samples: dict[str, list[float]] = {label: [] for label, _ in commands}
        for _, argv in commands:
            time_runs(argv, 0, warmup=2)
        for _ in range(args.runs):
            for label, argv in commands:
                samples[label] += time_runs(argv, 1, warmup=0)
        for label, _ in commands:
            times = sorted(samples[label])
            medians[label] = statistics.median(times)
            p90 = times[min(len(times) - 1, int(len(times) * 0.9))]
            print(f"{label:<58} {medians[label]:8.1f} {times[0]:8.1f} {p90:8.1f}")
    if phusion:
        ratio = medians["ours: passenger-memory-stats"] / medians[commands[-1][0]]
        print(f"ours / Phusion Passenger's (median): {ratio:.2f}")
    else:
        print("Phusion Passenger's passenger-memory-stats is not installed: "
              "apt-get install passenger to compare")
    return 0


if __name__ == "__main__":
    sys.exit(main())
