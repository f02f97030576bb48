"""Log lines fit atomic pipe writes, and writers never block without a reader."""

from __future__ import annotations

import os
from pathlib import Path

from passenger.common.log_records import (
    CONTINUED,
    PIPE_BUF,
    LogLineWriter,
    agent_line,
    create_pipe,
    frame_lines,
)


def test_long_lines_are_cut_into_whole_atomic_writes() -> None:
    text = "first line\n" + "é" * 5000 + "\nlast line"
    writes = frame_lines(text)
    assert all(len(w) <= PIPE_BUF and w.endswith(b"\n") for w in writes)
    joined = b"".join(writes).decode()  # never splits a UTF-8 character
    assert joined.startswith("first line\n") and joined.endswith("last line\n")
    assert joined.replace(CONTINUED + "\n", "") == text + "\n"


def test_short_lines_share_one_write() -> None:
    assert frame_lines("a\nb\nc") == [b"a\nb\nc\n"]


def test_agent_line_layout() -> None:
    line = agent_line("W", 42, "pool", "hello", t=0.5)
    assert line.startswith("[ W ") and line.endswith(" 42 pool ]: hello")


def test_writer_keeps_lines_while_the_pipe_is_full_and_counts_overflow(tmp_path: Path) -> None:
    fifo = str(tmp_path / "f")
    keeper = create_pipe(fifo)  # what the watchdog holds: a reader always exists
    writer = LogLineWriter(fifo, max_buffered=3)
    try:
        big = "x" * (PIPE_BUF - 1)
        written = 0
        while writer.flush() and written < 10_000:  # fill the pipe
            writer.write(big)
            written += 1
        assert writer.pending
        for i in range(5):
            writer.write(f"m{i}")  # returns at once although the pipe is full
        assert writer.dropped_total >= 2
        drained = b""
        while True:
            try:
                drained += os.read(keeper, 1 << 20)
            except BlockingIOError:
                if writer.flush():
                    break
        while True:
            try:
                drained += os.read(keeper, 1 << 20)
            except BlockingIOError:
                break
    finally:
        writer.close()
        os.close(keeper)
    lines = drained.decode().splitlines()
    assert any("log lines were dropped while the logging pipe was full" in x for x in lines)
    kept = [x for x in lines if x.startswith("m")]
    assert kept == sorted(kept) and len(kept) + writer.dropped_total - (
        written - sum(1 for x in lines if x == big)) >= 3
