"""The benchmark's one entry point: `python -m benchmarks.run [--with-passenger]`.

It runs our server beside gunicorn (sync and gthread), uWSGI and, when asked, real
Passenger 6, in one go on 127.0.0.1, because only ratios measured in the same run on the
same machine mean anything: hello and django under wrk, big bodies with a timed client,
memory of the agents idle and after load, supervision and start-up timings; then checks
the goals of "Performance wave 2" and draws a chart. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks import (
    appsetup,
    bigbody,
    charts,
    goals,
    memory,
    procs,
    pyspy,
    report,
    supervision,
    throughput,
    wrk,
)
from benchmarks.servers import (
    GTHREAD,
    GUNICORN,
    OURS,
    PASSENGER,
    UWSGI,
    GunicornServer,
    OurServer,
    RealPassenger,
    Server,
    UwsgiServer,
    default_python,
    have_real_passenger,
)
from benchmarks.supervision import Timing

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = ("hello", "django", "bigbody")
TITLES = ("PassengerWatchdog", "PassengerHelperAgent", "PassengerLoggingAgent",
          "Passenger ", "gunicorn", "uwsgi")


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
    p.add_argument("--no-gthread", action="store_true",
                   help="leave out gunicorn -k gthread --threads 4")
    p.add_argument("--no-uwsgi", action="store_true", help="leave out uWSGI")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help="comma-separated, any of: " + ", ".join(SCENARIOS))
    p.add_argument("--duration", type=float, default=10.0, help="s per measured wrk run")
    p.add_argument("--warmup", type=float, default=2.0, help="s of unrecorded wrk first")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of wrk runs; each starts at the next server")
    p.add_argument("--connections", default="8,64", help="comma-separated wrk -c values")
    p.add_argument("--bigbody-reps", type=int, default=5,
                   help="timed transfers per big-body case and server")
    p.add_argument("--memory-load", type=float, default=60.0,
                   help="s of load each server gets before memory is read again (the hello "
                        "wrk runs count; what they lack is made up with wrk -c64)")
    p.add_argument("--reps", type=int, default=5, help="repetitions per supervision timing")
    p.add_argument("--skip-throughput", action="store_true",
                   help="leave out the hello and django wrk scenarios")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-supervision", action="store_true",
                   help="leave out supervision and start-up timings")
    p.add_argument("--profile", action="store_true",
                   help="also profile our helper agent and one app process with py-spy "
                        "under wrk load")
    p.add_argument("--profile-duration", type=float, default=10.0)
    p.add_argument("--profile-connections", type=int, default=64)
    p.add_argument("--bin-dir", type=Path, default=Path(sys.executable).parent,
                   help="where our `passenger`, gunicorn and uwsgi are (this venv's bin)")
    p.add_argument("--python", default=default_python(),
                   help="interpreter every server runs the app with (uWSGI embeds the "
                        "Python it was built with and is pointed at this one's venv: same "
                        "version)")
    p.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--chart", type=Path, default=REPO / "benchmarks" / "results" / "latest.png",
                   help="where the chart is copied to (it is also written into "
                        "--results-dir as <time>.png)")
    p.add_argument("--no-install", action="store_true",
                   help="never apt-get install a missing wrk or passenger")
    args = p.parse_args(argv)
    args.connections = [int(c) for c in args.connections.split(",")]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if args.skip_throughput:
        args.scenarios = [s for s in args.scenarios if s not in ("hello", "django")]
    if min(args.rounds, args.reps, args.bigbody_reps) < 1:
        p.error("--rounds, --reps and --bigbody-reps must be ≥ 1")
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
    if not args.no_uwsgi and not (args.bin_dir / "uwsgi").exists():
        sys.exit(f"benchmark: uwsgi is not in {args.bin_dir}; pip install uwsgi (it builds "
                 "with gcc), or pass --no-uwsgi")
    if "django" in args.scenarios and subprocess.run(
            [args.python, "-c", "import django"], capture_output=True, timeout=60,
            check=False).returncode != 0:
        sys.exit(f"benchmark: {args.python} cannot import django; pip install django, or "
                 "leave the django scenario out (--scenarios)")
    if args.with_passenger and not have_real_passenger():
        apt_install("passenger", not args.no_install)


# -- servers -------------------------------------------------------------------------

class Factory:
    """Makes fresh server objects, each with its own work dir and environment tag."""

    def __init__(self, args: argparse.Namespace, workdir: Path, tag: str,
                 baseline_bin: Path | None = None) -> None:
        self.args = args
        self.baseline_bin = baseline_bin
        self.workdir = workdir
        self.tag = tag
        self.count = 0
        self.made: list[Server] = []

    def make(self, label: str, app: appsetup.App) -> Server:
        server = self._make(label, app)
        self.made.append(server)
        return server

    def _make(self, label: str, app: appsetup.App) -> Server:
        self.count += 1
        sub = f"{label}.{app.name}.{self.count}"
        common = (label, self.workdir / "servers" / sub, app.dir, f"{self.tag}-{sub}",
                  self.args.python)
        bin_dir = self.args.bin_dir
        if label == OURS:
            return OurServer(*common, bin_dir=bin_dir)
        if label.startswith(OURS + "@") and self.baseline_bin is not None:
            return OurServer(*common, bin_dir=self.baseline_bin)
        if label == GUNICORN:
            return GunicornServer(*common, bin_dir=bin_dir, worker_args=[])
        if label == GTHREAD:
            return GunicornServer(*common, bin_dir=bin_dir,
                                  worker_args=["-k", "gthread", "--threads", "4"])
        if label == UWSGI:
            return UwsgiServer(*common, bin_dir=bin_dir)
        if label == PASSENGER:
            return RealPassenger(*common)
        raise ValueError(label)

    def maker(self, label: str, app: appsetup.App) -> Callable[[], Server]:
        return lambda: self.make(label, app)

    def start_all(self, labels: list[str], app: appsetup.App,
                  servers: list[Server]) -> list[str]:
        """Start one server per label on `app` into `servers` and wait until each is
        ready; one that does not get ready is stopped and left out. -> what went wrong.
        The caller stops `servers` (stop_all) in a `finally`, also when this raises."""
        for label in labels:
            servers.append(self.make(label, app))
            servers[-1].start()
        problems = []
        for s in list(servers):
            try:
                s.wait_ready()
            except (RuntimeError, TimeoutError) as e:
                servers.remove(s)
                s.stop()
                print(f"{s.label} on {app.name} did not start: {e}", file=sys.stderr,
                      flush=True)
                problems.append(f"{s.label} on {app.name} did not start, left out: "
                                f"{_gist(str(e))}")
        return problems


def _gist(text: str) -> str:
    """First and last line of an error (a console tail ends with the exception)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) <= 2:
        return " ".join(lines)
    return f"{lines[0]} … {lines[-1]}"


def stop_all(servers: list[Server]) -> None:
    for s in servers:
        s.stop()


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

class Bench:
    """What one benchmark run has measured so far, and what went wrong on the way."""

    def __init__(self, args: argparse.Namespace, factory: Factory, labels: list[str],
                 apps: dict[str, appsetup.App], script: Path) -> None:
        self.args = args
        self.factory = factory
        self.labels = labels
        self.apps = apps
        self.script = script
        self.runs: list[throughput.Run] = []
        self.memory: dict[str, Any] = {}
        self.big: dict[str, dict[str, bigbody.Result]] = {}
        self.sup: dict[str, dict[str, Timing]] = {}
        self.profile_text = ""
        self.profile: dict[str, Any] = {}
        self.problems: list[str] = []

    def phase(self, name: str, body: Callable[[], None]) -> None:
        """Run one phase; an error is reported and the run goes on with the next."""
        try:
            body()
        except Exception as e:  # reported, and the run goes on
            traceback.print_exc()
            self.problems.append(f"{name}: {type(e).__name__}: {_gist(str(e))}")

    @property
    def measure_memory(self) -> bool:
        return not self.args.skip_memory

    def wrk_scenario(self, name: str) -> None:
        a = self.args
        app = self.apps[name]
        print(f"{name} (wrk, order rotated each round):", file=sys.stderr, flush=True)
        servers: list[Server] = []
        try:
            self.problems += self.factory.start_all(self.labels, app, servers)
            with_memory = name == "hello" and self.measure_memory
            if with_memory:
                self.memory["idle"] = memory.read_all(servers)
            self.runs += throughput.run_rounds(name, servers, a.connections, a.rounds,
                                               a.duration, a.warmup, self.script)
            if with_memory:
                given = throughput.load_seconds(a.connections, a.rounds, a.duration,
                                                a.warmup)
                extra = memory.top_up(servers, a.memory_load - given, self.script)
                self._loaded(servers, given, extra)
        finally:
            stop_all(servers)

    def memory_only(self) -> None:
        """Memory without the hello wrk runs: idle, then `--memory-load` s of hello load."""
        print("memory (hello app):", file=sys.stderr, flush=True)
        servers: list[Server] = []
        try:
            self.problems += self.factory.start_all(self.labels, self.apps["hello"], servers)
            self.memory["idle"] = memory.read_all(servers)
            extra = memory.top_up(servers, self.args.memory_load, self.script)
            self._loaded(servers, 0.0, extra)
        finally:
            stop_all(servers)

    def _loaded(self, servers: list[Server], given: float, extra: float) -> None:
        self.memory["loaded"] = memory.read_all(servers)
        self.memory["load_s"] = given + extra
        how = []
        if given:
            how.append(f"{given:.0f} s of the hello wrk runs")
        if extra:
            how.append(f"{extra:.0f} s of wrk -c{memory.TOP_UP_CONNECTIONS} on GET /")
        self.memory["load_how"] = " + ".join(how) or "none"

    def big_bodies(self) -> None:
        app = self.apps["bigbody"]
        print(f"big bodies ({self.args.bigbody_reps} timed transfers each):",
              file=sys.stderr, flush=True)
        servers: list[Server] = []
        try:
            self.problems += self.factory.start_all(self.labels, app, servers)
            self.big = bigbody.run(servers, self.args.bigbody_reps,
                                   app.dir / appsetup.FILE_PATH)
        finally:
            stop_all(servers)

    def supervise_all(self) -> None:
        a = self.args
        print(f"supervision and start-up (no traffic, {a.reps} reps):", file=sys.stderr,
              flush=True)
        for label in self.labels:
            self.phase(f"supervision of {label}", functools.partial(self._supervise, label))

    def _supervise(self, label: str) -> None:
        reps, app = self.args.reps, self.apps["hello"]
        timings: dict[str, Timing] = {}
        self.sup[label] = timings
        server = self.factory.make(label, app)
        try:
            server.start()
            server.wait_ready()
            timings |= supervision.kill_app_idle(server, reps)
            timings |= supervision.kill_front(server, reps)
            timings |= supervision.restart_app(server, reps)
        finally:
            server.stop()
        timings |= supervision.start_to_first_200(self.factory.maker(label, app), reps)

    def profile_ours(self, stamp: str) -> None:
        a = self.args
        py_spy = pyspy.find_py_spy(a.bin_dir)
        if py_spy is None:
            self.profile_text = "## Profile\npy-spy not found: pip install py-spy"
            return
        print("profiling our helper agent with py-spy:", file=sys.stderr, flush=True)
        server = self.factory.make(OURS, self.apps["hello"])
        assert isinstance(server, OurServer)
        try:
            server.start()
            server.wait_ready()
            wrk.run(server.port, a.profile_connections, a.warmup or 1.0, self.script)
            self.profile_text, self.profile = pyspy.profile(
                server, py_spy, a.profile_duration, a.profile_connections, self.script,
                a.results_dir, stamp)
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
              if procs.cmdline(pid).startswith(TITLES) or "gunicorn" in procs.cmdline(pid)
              or "uwsgi" in procs.cmdline(pid)]
    foreign = [pid for pid in titled if pid not in ours]
    text = (f"leftover check: {len(ours)} process(es) of this run were still alive"
            f"{' and were killed: ' + str(ours) if ours else ''}; "
            f"{len(foreign)} other process(es) with a Passenger title, gunicorn or uwsgi "
            "(not started by this run)")
    return text


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def server_labels(args: argparse.Namespace) -> list[str]:
    labels = [OURS]
    if args.baseline:
        labels.append(f"{OURS}@{args.baseline}")
    labels.append(GUNICORN)
    if not args.no_gthread:
        labels.append(GTHREAD)
    if not args.no_uwsgi:
        labels.append(UWSGI)
    if args.with_passenger:
        labels.append(PASSENGER)
    return labels


def command_line(argv: list[str] | None) -> str:
    given = shlex.join(argv if argv is not None else sys.argv[1:])
    tox_env = os.environ.get("TOX_ENV_NAME")
    if tox_env:
        return f"tox -e {tox_env}" + (f" -- {given}" if given else "")
    return f"python -m benchmarks.run {given}".rstrip()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    ensure_tools(args)
    started = datetime.datetime.now(datetime.UTC)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    labels = server_labels(args)
    tag = f"pbench-{os.getpid()}-{int(time.time())}"
    workdir = Path(tempfile.mkdtemp(prefix="pbench.", dir="/tmp"))
    needed = set(args.scenarios) | {"hello"}    # memory, supervision, profile use hello
    apps = {name: appsetup.prepare(name, workdir) for name in SCENARIOS if name in needed}
    script = wrk.write_script(workdir)
    meta = {"started_utc": started.strftime("%Y-%m-%d %H:%M"),
            "command": command_line(argv), "machine": report.machine(),
            "duration": args.duration, "warmup": args.warmup, "rounds": args.rounds,
            "connections": args.connections, "reps": args.reps,
            "bigbody_reps": args.bigbody_reps, "scenarios": args.scenarios,
            "servers": labels, "ours": OURS, "app_python": args.python,
            "apps": {name: app.source for name, app in apps.items()}}
    factory = Factory(args, workdir, tag)
    run = Bench(args, factory, labels, apps, script)
    try:
        if args.baseline:
            factory.baseline_bin = build_baseline(args.baseline, workdir)
        for name in ("hello", "django"):
            if name in args.scenarios:
                run.phase(f"{name} throughput", functools.partial(run.wrk_scenario, name))
        if "hello" not in args.scenarios and run.measure_memory:
            run.phase("memory", run.memory_only)
        if "bigbody" in args.scenarios:
            run.phase("big bodies", run.big_bodies)
        if not args.skip_supervision:
            run.supervise_all()
        if args.profile:
            run.phase("profile", lambda: run.profile_ours(stamp))
    finally:
        cleanup = leftover_check(tag, factory.made)
        print(cleanup, file=sys.stderr, flush=True)
        shutil.rmtree(workdir, ignore_errors=True)
    summary = report.summarize(run.runs)
    goal_list = goals.evaluate(goals.Figures(summary, run.big, run.memory, run.sup),
                               args.connections)
    title = (f"{meta['machine']['date']}, commit {meta['machine']['commit']}: "
             f"{args.rounds} round(s) of {args.duration:g} s, 2 app processes each")
    chart_line = charts.draw(summary, labels, title,
                             [args.results_dir / f"{stamp}.png", args.chart])
    text = report.render(meta, summary, run.sup, run.memory, run.big, goal_list, chart_line,
                         run.profile_text)
    if run.problems:
        text += "\n## Problems during the run\n" + "\n".join(f"- {p}" for p in run.problems)
        text += "\n"
    print(text)
    results: dict[str, Any] = {
        "meta": meta,
        "throughput_runs": [r.to_json() for r in run.runs],
        "summary": {sc: {s: {str(c): e for c, e in per.items()} for s, per in by.items()}
                    for sc, by in summary.items()},
        "bigbody": {k: {s: r.to_json() for s, r in per.items()} for k, per in run.big.items()},
        "memory": run.memory,
        "supervision": {s: {k: t.to_json() for k, t in ts.items()}
                        for s, ts in run.sup.items()},
        "goals": [g.to_json() for g in goal_list], "profile": run.profile,
        "problems": run.problems, "leftover_check": cleanup,
    }
    for name in (stamp, "latest"):
        (args.results_dir / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.results_dir / f"{name}.txt").write_text(text)
    print(f"results: {args.results_dir / stamp}.json, .txt and .png (also latest.*)",
          file=sys.stderr)
    return 1 if run.problems else 0


if __name__ == "__main__":
    sys.exit(main())
