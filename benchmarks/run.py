"""The benchmark's one entry point: `python -m benchmarks.run [--with-passenger]`.

It runs our server beside gunicorn (sync, the peer the issue sets a bar against) and,
when asked, real Passenger 6, in one go on 127.0.0.1, because only ratios measured in
the same run on the same machine mean anything. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks import procs, pyspy, report, supervision, throughput, wrk
from benchmarks.servers import (
    GunicornServer,
    OurServer,
    RealPassenger,
    Server,
    default_python,
    have_real_passenger,
)
from benchmarks.supervision import Timing

REPO = Path(__file__).resolve().parent.parent
HELLO = REPO / "examples" / "hello" / "passenger_wsgi.py"
OURS = "ours"
GUNICORN = "gunicorn-sync"
GTHREAD = "gunicorn-gthread"
PASSENGER = "passenger"
TITLES = ("PassengerWatchdog", "PassengerHelperAgent", "PassengerLoggingAgent",
          "Passenger ", "gunicorn")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter,
                     argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=_HelpFormatter)
    p.add_argument("--with-passenger", action="store_true",
                   help="also run real Passenger 6 (apt-get installs the Debian package "
                        "`passenger` if /usr/bin/passenger is missing)")
    p.add_argument("--baseline", metavar="GIT_REF",
                   help="also run ours as it was at this commit (built into a venv of its "
                        "own), to measure a change before and after in one run")
    p.add_argument("--with-gthread", action="store_true",
                   help="also run gunicorn -k gthread --threads 4")
    p.add_argument("--duration", type=float, default=10.0, help="s per measured wrk run")
    p.add_argument("--warmup", type=float, default=2.0, help="s of unrecorded wrk first")
    p.add_argument("--rounds", type=int, default=2, help="A B A B rounds (the issue asks for ≥ 2)")
    p.add_argument("--connections", default="8,64", help="comma-separated wrk -c values")
    p.add_argument("--reps", type=int, default=5, help="repetitions per supervision timing")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-supervision", action="store_true")
    p.add_argument("--profile", action="store_true",
                   help="also profile our helper agent and one app process with py-spy "
                        "under wrk load")
    p.add_argument("--profile-duration", type=float, default=10.0)
    p.add_argument("--profile-connections", type=int, default=64)
    p.add_argument("--bin-dir", type=Path, default=Path(sys.executable).parent,
                   help="where our `passenger` and gunicorn are (default: this venv's bin)")
    p.add_argument("--python", default=default_python(),
                   help="interpreter every server runs the app with (default: this one)")
    p.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--no-install", action="store_true",
                   help="never apt-get install a missing wrk or passenger")
    args = p.parse_args(argv)
    args.connections = [int(c) for c in args.connections.split(",")]
    if args.rounds < 1 or args.reps < 1:
        p.error("--rounds and --reps must be ≥ 1")
    return args


# -- tools ---------------------------------------------------------------------------

def apt_install(package: str, allowed: bool) -> None:
    if not allowed or os.geteuid() != 0:
        sys.exit(f"benchmark: {package} is missing; install the Debian package "
                 f"`{package}` (apt-get install {package})")
    print(f"installing the Debian package {package} …", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-q", package], check=True, env=env,
                   timeout=1200)


def ensure_tools(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        apt_install("wrk", not args.no_install)
    if not (args.bin_dir / "PassengerWatchdog").exists():
        sys.exit(f"benchmark: our passenger is not in {args.bin_dir} (no PassengerWatchdog "
                 "there); run from the venv that has the five packages, or pass --bin-dir")
    if not (args.bin_dir / "gunicorn").exists():
        sys.exit(f"benchmark: gunicorn is not in {args.bin_dir}; pip install gunicorn")
    if args.with_passenger and not have_real_passenger():
        apt_install("passenger", not args.no_install)


# -- servers -------------------------------------------------------------------------

class Factory:
    """Makes fresh server objects, each with its own work dir and environment tag."""

    def __init__(self, args: argparse.Namespace, workdir: Path, app_dir: Path,
                 tag: str, baseline_bin: Path | None = None) -> None:
        self.args = args
        self.baseline_bin = baseline_bin
        self.workdir = workdir
        self.app_dir = app_dir
        self.tag = tag
        self.count = 0
        self.made: list[Server] = []

    def make(self, label: str) -> Server:
        server = self._make(label)
        self.made.append(server)
        return server

    def _make(self, label: str) -> Server:
        self.count += 1
        sub = f"{label}.{self.count}"
        common = (label, self.workdir / sub, self.app_dir, f"{self.tag}-{sub}",
                  self.args.python)
        if label == OURS:
            return OurServer(*common, bin_dir=self.args.bin_dir)
        if label.startswith(OURS + "@") and self.baseline_bin is not None:
            return OurServer(*common, bin_dir=self.baseline_bin)
        if label == GUNICORN:
            return GunicornServer(*common, bin_dir=self.args.bin_dir, worker_args=[])
        if label == GTHREAD:
            return GunicornServer(*common, bin_dir=self.args.bin_dir,
                                  worker_args=["-k", "gthread", "--threads", "4"])
        if label == PASSENGER:
            return RealPassenger(*common)
        raise ValueError(label)

    def maker(self, label: str) -> Callable[[], Server]:
        return lambda: self.make(label)


def build_baseline(ref: str, workdir: Path) -> Path:
    """A venv with our five packages as they were at git `ref`; -> its bin dir."""
    print(f"building ours at {ref} for the baseline …", file=sys.stderr, flush=True)
    tree = workdir / "baseline-src"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "packages"],
                             check=True, capture_output=True, timeout=120).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True, timeout=120)
    venv = workdir / "baseline-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    packages = [str(tree / "packages" / name) for name in
                ("common", "logging-agent", "watchdog", "helper-agent", "cli")]
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *packages], check=True,
                   timeout=1200)
    return venv / "bin"


# -- phases --------------------------------------------------------------------------

def throughput_phase(args: argparse.Namespace, factory: Factory, labels: list[str],
                     script: Path, results: dict[str, Any]) -> list[throughput.Run]:
    print("throughput (servers alternated):", file=sys.stderr, flush=True)
    servers = [factory.make(label) for label in labels]
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready()
        results["memory_fresh"] = {s.label: throughput.memory(s) for s in servers}
        runs = throughput.run_rounds(servers, args.connections, args.rounds, args.duration,
                                     args.warmup, script)
        time.sleep(1.0)  # let in-flight work finish: memory is read idle
        results["memory"] = {s.label: throughput.memory(s) for s in servers}
        return runs
    finally:
        for s in servers:
            s.stop()


def supervision_phase(args: argparse.Namespace, factory: Factory,
                      labels: list[str]) -> dict[str, dict[str, Timing]]:
    print(f"supervision (no traffic, {args.reps} reps):", file=sys.stderr, flush=True)
    out: dict[str, dict[str, Timing]] = {}
    for label in labels:
        timings: dict[str, Timing] = {}
        server = factory.make(label)
        try:
            server.start()
            server.wait_ready()
            timings |= supervision.kill_app_idle(server, args.reps)
            timings |= supervision.kill_front(server, args.reps)
            timings |= supervision.restart_app(server, args.reps)
        finally:
            server.stop()
        timings |= supervision.start_to_first_200(factory.maker(label), args.reps)
        out[label] = timings
    return out


def profile_phase(args: argparse.Namespace, factory: Factory, script: Path,
                  stamp: str) -> tuple[str, dict[str, Any]]:
    py_spy = pyspy.find_py_spy(args.bin_dir)
    if py_spy is None:
        return "## Profile\npy-spy not found: pip install py-spy", {}
    print("profiling our helper agent with py-spy:", file=sys.stderr, flush=True)
    server = factory.make(OURS)
    assert isinstance(server, OurServer)
    try:
        server.start()
        server.wait_ready()
        wrk.run(server.port, args.profile_connections, args.warmup or 1.0, script)
        return pyspy.profile(server, py_spy, args.profile_duration,
                             args.profile_connections, script, args.results_dir, stamp)
    finally:
        server.stop()


# -- cleanup -------------------------------------------------------------------------

def leftover_check(tag: str, servers: list[Server]) -> str:
    """Kill anything of ours still alive, and say what `ps` shows with our titles."""
    found = set(procs.tagged_pids(tag))
    for server in servers:
        found |= set(server.known_alive())
    ours = sorted(found)
    procs.kill_all(ours)
    titled = [pid for pid in procs.all_pids()
              if procs.cmdline(pid).startswith(TITLES) or "gunicorn" in procs.cmdline(pid)]
    foreign = [pid for pid in titled if pid not in ours]
    text = (f"leftover check: {len(ours)} process(es) of this run were still alive"
            f"{' and were killed: ' + str(ours) if ours else ''}; "
            f"{len(foreign)} other process(es) with a Passenger title or gunicorn "
            "(not started by this run)")
    return text


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    ensure_tools(args)
    started = datetime.datetime.now(datetime.UTC)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    baseline = [f"{OURS}@{args.baseline}"] if args.baseline else []
    labels = [OURS, *baseline, GUNICORN] + ([GTHREAD] if args.with_gthread else []) + \
        ([PASSENGER] if args.with_passenger else [])
    tag = f"pbench-{os.getpid()}-{int(time.time())}"
    workdir = Path(tempfile.mkdtemp(prefix="pbench.", dir="/tmp"))
    app_dir = workdir / "hello"
    app_dir.mkdir()
    shutil.copy(HELLO, app_dir / "passenger_wsgi.py")
    script = wrk.write_script(workdir)
    baseline_bin = build_baseline(args.baseline, workdir) if args.baseline else None
    factory = Factory(args, workdir, app_dir, tag, baseline_bin)
    given = shlex.join(argv if argv is not None else sys.argv[1:])
    tox_env = os.environ.get("TOX_ENV_NAME")
    command = (f"tox -e {tox_env}" + (f" -- {given}" if given else "") if tox_env
               else f"python -m benchmarks.run {given}".rstrip())
    meta = {"started_utc": started.strftime("%Y-%m-%d %H:%M"), "command": command,
            "machine": report.machine(), "duration": args.duration, "warmup": args.warmup,
            "rounds": args.rounds, "connections": args.connections, "reps": args.reps,
            "servers": labels, "ours": OURS, "app_python": args.python,
            "app": str(HELLO.relative_to(REPO))}
    results: dict[str, Any] = {"meta": meta}
    runs: list[throughput.Run] = []
    sup: dict[str, dict[str, Timing]] = {}
    profile_text = ""
    try:
        if not args.skip_throughput:
            runs = throughput_phase(args, factory, labels, script, results)
        if not args.skip_supervision:
            sup = supervision_phase(args, factory, labels)
        if args.profile:
            profile_text, results["profile"] = profile_phase(args, factory, script, stamp)
    finally:
        cleanup = leftover_check(tag, factory.made)
        print(cleanup, file=sys.stderr, flush=True)
        shutil.rmtree(workdir, ignore_errors=True)
    summary = report.summarize(runs)
    rat = report.ratios(summary, OURS) if OURS in summary else {}
    goal_lines = report.goals(summary, rat, sup, OURS,
                              PASSENGER if PASSENGER in labels else None, GUNICORN)
    text = report.render(meta, summary, rat, sup, results.get("memory", {}), goal_lines,
                         profile_text)
    print(text)
    results |= {
        "throughput_runs": [r.to_json() for r in runs],
        "summary": {s: {str(c): e for c, e in per.items()} for s, per in summary.items()},
        "ratios": {p: {str(c): r for c, r in per.items()} for p, per in rat.items()},
        "supervision": {s: {k: t.to_json() for k, t in ts.items()} for s, ts in sup.items()},
        "goals": goal_lines, "leftover_check": cleanup,
    }
    for name in (stamp, "latest"):
        (args.results_dir / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.results_dir / f"{name}.txt").write_text(text)
    print(f"results: {args.results_dir / stamp}.json and .txt (also latest.*)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
