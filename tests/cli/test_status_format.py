"""passenger-status's text layout, checked against real Passenger 6.0.17's output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from passenger.cli.status import duration, format_pool

# Output captured from real Passenger 6.0.17 (a copy of the team's shared reference)
REFERENCE = Path(__file__).parents[1] / "fixtures" / "passenger-6.0.17"


def snapshot(**group_extra: Any) -> dict[str, Any]:
    now = 1_000_000.0
    return {
        "version": "6.0.17", "server_software": "Phusion_Passenger/6.0.17",
        "instance": "ZXnUDmyA", "now": now, "max_pool_size": 6, "process_count": 2,
        "requests_in_top_level_queue": 0, "log_lines_dropped": 0,
        "groups": [{
            "name": "/srv/anchor/hello", "app_root": "/srv/anchor/hello",
            "requests_in_queue": 0, "spawning": 0, "last_spawn_error": "",
            "processes": [
                {"pid": 10125, "state": "enabled", "sessions": 0, "processed": 2,
                 "spawn_ended": now - 11, "last_used": now - 10, "cpu": 0,
                 "real_memory_kb": 6 * 1024},
                {"pid": 10178, "state": "enabled", "sessions": 0, "processed": 0,
                 "spawn_ended": now - 11, "last_used": now - 11, "cpu": 0,
                 "real_memory_kb": 6 * 1024 + 500},
            ], **group_extra}],
    }


def test_body_matches_passenger_byte_for_byte() -> None:
    ours = format_pool(snapshot(), header=False)
    theirs = (REFERENCE / "passenger-status.txt").read_text().split("\n\n", 1)[1]
    theirs = theirs.split("[exit status")[0]
    assert ours.rstrip("\n") == theirs.rstrip("\n")


def test_header_layout() -> None:
    head = format_pool(snapshot()).splitlines()[:3]
    assert head[0] == "Version : 6.0.17"
    assert head[1].startswith("Date    : ")
    assert head[2] == "Instance: ZXnUDmyA (Phusion_Passenger/6.0.17)"


def test_spawning_shutting_down_and_errors_are_shown() -> None:
    pool = snapshot(spawning=1, last_spawn_error="SyntaxError: bad")
    pool["groups"][0]["processes"][0]["state"] = "shutting_down"
    text = format_pool(pool, header=False)
    assert "  (spawning 1 new process...)\n" in text
    assert "  Last spawn error: SyntaxError: bad\n" in text
    assert "    Shutting down...\n" in text


def test_unknown_metrics_are_question_marks() -> None:
    pool = snapshot()
    pool["groups"][0]["processes"][0].update(cpu=None, real_memory_kb=None)
    assert "    CPU: ?       Memory  : ?       Last used: 10s ago" in format_pool(pool)


def test_duration_words() -> None:
    assert [duration(s) for s in (0, 11, 271, 7205, 90061)] == [
        "0s", "11s", "4m 31s", "2h 0m 5s", "1d 1h 1m 1s"]
