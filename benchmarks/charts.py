"""One PNG of the throughput runs: req/s (top row) and p99 latency (bottom row) per
server, one panel per scenario and connection count (hello/django × c=8/64), bars at the
median over rounds with the min–max spread as an error bar.

matplotlib is a benchmark-only dependency (tox's bench env installs it); without it the
run goes on and the report says that no chart was drawn.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

Summary = dict[str, dict[str, dict[int, dict[str, Any]]]]
SCENARIOS = ("hello", "django")


def draw(summary: Summary, servers: list[str], title: str, paths: list[Path]) -> str:
    """Write the chart to each of `paths`; -> a line for the report."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart: not drawn (matplotlib is not installed: pip install matplotlib)"
    panels = [(scenario, c) for scenario in SCENARIOS if scenario in summary
              for c in sorted({c for per in summary[scenario].values() for c in per})]
    if not panels:
        return "chart: not drawn (no hello or django throughput runs)"
    colors = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(servers)}
    fig, axes = plt.subplots(2, len(panels), figsize=(3.2 * len(panels) + 1, 6.5),
                             squeeze=False)
    for col, (scenario, conns) in enumerate(panels):
        labels = [s for s in servers if conns in summary[scenario].get(s, {})]
        entries = [summary[scenario][s][conns] for s in labels]
        for row, (key, lo, hi, name) in enumerate((
                ("rps", "rps_min", "rps_max", "req/s"),
                ("p99_ms", "p99_min", "p99_max", "p99 latency, ms"))):
            ax = axes[row][col]
            values = [e[key] for e in entries]
            spread = [[v - e[lo] for v, e in zip(values, entries, strict=True)],
                      [e[hi] - v for v, e in zip(values, entries, strict=True)]]
            x = list(range(len(labels)))
            ax.bar(x, values, yerr=spread, capsize=3,
                   color=[colors[s] for s in labels])
            ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=8)
            ax.tick_params(axis="y", labelsize=8)
            ax.grid(axis="y", alpha=0.3)
            if row == 0:
                ax.set_title(f"{scenario}, c={conns}", fontsize=10)
            if col == 0:
                ax.set_ylabel(name)
            top = max([*values, 1e-9])
            for xi, v in zip(x, values, strict=True):   # the median: in its bar, or above
                inside = v >= 0.2 * top               # else a short bar
                ax.annotate(f"{v:,.0f}" if key == "rps" else f"{v:.1f}",
                            (xi, v / 2 if inside else v), ha="center",
                            va="center" if inside else "bottom", fontsize=7, rotation=90,
                            color="white" if inside else "black", fontweight="bold",
                            xytext=(0, 0 if inside else 3), textcoords="offset points")
    fig.suptitle(f"{title}\nbars: median over rounds; error bars: min–max", fontsize=10)
    fig.tight_layout()
    first, *others = paths
    first.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(first, dpi=110)
    plt.close(fig)
    for other in others:
        other.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(first, other)
    return "chart: " + ", ".join(str(p) for p in paths)
