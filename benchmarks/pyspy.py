"""Profiling our helper agent (and one app process) under wrk load with py-spy.

py-spy samples at 100 Hz with --native, so time spent inside uvloop and in system calls
shows up as such (`write`, `read`, `epoll_pwait`) instead of being charged to the Python
frame that called into C. Sampling pauses the target for a few µs per sample (under 1%
of its time at this rate); --nonblocking would avoid that but gives torn stacks.
Output: raw collapsed stacks (feed them to flamegraph.pl or speedscope), an SVG flame
graph of the helper agent, and a text summary: top functions by own and inclusive
samples, and own samples grouped by Python module (native frames charged to the nearest
Python module above them).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks import wrk
from benchmarks.servers import OurServer

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
SAMPLING = ["--rate", "100", "--native"]


def find_py_spy(bin_dir: Path) -> str | None:
    candidate = bin_dir / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def _frame_name(frame: str) -> str:
    """`func (path/to/module.py:123)` -> `func (module.py)`: one entry per function."""
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{m.group('func')} ({Path(m.group('file')).name})"


def _module_of(frame: str) -> str | None:
    m = FRAME.match(frame.strip())
    if m and m.group("file").endswith(".py"):
        return Path(m.group("file")).name
    return None


def summarize(raw: str, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output,
    and self samples per Python module (native leaves charged to the module above)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_module: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        raw_frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not raw_frames:
            continue
        frames = [_frame_name(f) for f in raw_frames]
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
        modules = [m for m in map(_module_of, raw_frames) if m]
        leaf_module = _module_of(raw_frames[-1])
        if leaf_module:
            by_module[f"Python code in {leaf_module}"] += count
        else:
            native = frames[-1].split(" (")[0]
            by_module[f"{native} (C, called from {modules[-1] if modules else '?'})"] += count

    def share(c: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / max(total, 1), 1)) for name, n in c.most_common(top)]
    return {"samples": total, "self": share(own), "inclusive": share(inclusive),
            "self_by_module": share(by_module)}


def profile(server: OurServer, py_spy: str, duration: float, connections: int,
            script: Path, out_dir: Path, stamp: str) -> tuple[str, dict[str, Any]]:
    """Record the helper agent and one app process while wrk runs; return text + JSON."""
    procs_ = {p.name: p.pid for p in server.processes() if p.role != "app"}
    apps = server.app_pids()
    targets = {"helper-agent": procs_["helper agent"], "app": apps[0]}
    recorders = []
    files: dict[str, Path] = {}
    for name, pid in targets.items():
        files[name] = out_dir / f"{stamp}-profile-{name}.txt"
        recorders.append(subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), "--duration", f"{duration:g}",
             *SAMPLING, "--format", "raw", "-o", str(files[name])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    svg = out_dir / f"{stamp}-profile-helper-agent.svg"
    recorders.append(subprocess.Popen(
        [py_spy, "record", "--pid", str(targets["helper-agent"]), "--duration",
         f"{duration:g}", *SAMPLING, "-o", str(svg)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    try:
        result = wrk.run(server.port, connections, duration + 1, script)
    finally:
        errors = []
        for rec in recorders:
            try:
                _, err = rec.communicate(timeout=duration + 30)
            except subprocess.TimeoutExpired:
                rec.kill()
                _, err = rec.communicate()
            if rec.returncode != 0:
                errors.append(err.decode(errors="replace").strip())
    if errors:
        print("py-spy: " + "\n".join(errors), file=sys.stderr)
    data: dict[str, Any] = {"wrk": result.to_json(), "files": {k: str(v) for k, v in
                                                               files.items()}}
    lines = [f"## Profile (py-spy, {duration:g} s at {connections} conns, "
             f"{result.rps:,.0f} req/s while sampled)"]
    for name, path in files.items():
        raw = path.read_text() if path.exists() else ""
        summary = summarize(raw)
        data[name] = summary
        lines.append(f"\n{name} ({summary['samples']} samples; % of samples)")
        lines.append("| self % | function | | inclusive % | function |")
        lines.append("|---:|---|---|---:|---|")
        for (s_name, s_pct), (i_name, i_pct) in zip(summary["self"], summary["inclusive"],
                                                     strict=False):
            lines.append(f"| {s_pct} | {s_name} | | {i_pct} | {i_name} |")
        lines.append("\n| own samples by module | % |\n|---|---:|")
        lines += [f"| {m} | {pct} |" for m, pct in summary["self_by_module"][:10]]
    lines.append(f"\nraw stacks: {', '.join(str(p) for p in files.values())}; "
                 f"flame graph: {svg}")
    return "\n".join(lines), data
