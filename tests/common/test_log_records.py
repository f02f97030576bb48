"""Log lines fit atomic pipe writes, and writers never block without a reader."""

from __future__ import annotations

import os
import time
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


def fill_pipe(writer: LogLineWriter) -> int:
    """Write pipe-page-sized lines until the pipe is full and one waits; returns how many."""
    big = "x" * (PIPE_BUF - 1)
    written = 0
    while writer.flush() and written < 10_000:
        writer.write(big)
        written += 1
    assert writer.pending
    return written


def drain(keeper: int, *writers: LogLineWriter, timeout: float = 10.0) -> list[str]:
    """Read the pipe until every writer has delivered what it holds (within `timeout`)."""
    drained = b""
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, "the writers never delivered what they hold"
        try:
            drained += os.read(keeper, 1 << 20)
        except BlockingIOError:
            if all([w.flush() for w in writers]):
                break
    while True:
        try:
            drained += os.read(keeper, 1 << 20)
        except BlockingIOError:
            break
    return drained.decode().splitlines()


def test_writer_keeps_lines_while_the_pipe_is_full_and_counts_overflow(tmp_path: Path) -> None:
    fifo = str(tmp_path / "f")
    keeper = create_pipe(fifo)  # what the watchdog holds: a reader always exists
    writer = LogLineWriter(fifo, max_buffered=3, name="main log")
    try:
        written = fill_pipe(writer)
        assert len(writer.pending) == 1
        for i in range(5):
            writer.write(f"m{i}")  # returns at once although the pipe is full
        assert len(writer.pending) == 3  # the page that did not fit, m0, m1
        assert (writer.dropped, writer.dropped_total) == (3, 3)
        lines = drain(keeper, writer)
    finally:
        writer.close()
        os.close(keeper)
    assert sum(1 for x in lines if x.startswith("xxx")) == written  # none lost
    assert [x for x in lines if x.startswith("m")] == ["m0", "m1"]
    notices = [x for x in lines if "dropped" in x]
    assert len(notices) == 1 and " 3 main log lines dropped between " in notices[0]
    assert lines[-1] == notices[0]  # after what waited, not before it
    assert (writer.dropped, writer.dropped_total) == (0, 3)


def test_a_long_stall_costs_one_notice_and_a_bounded_queue(tmp_path: Path) -> None:
    fifo = str(tmp_path / "f")
    keeper = create_pipe(fifo)
    writer = LogLineWriter(fifo, max_buffered=3)
    try:
        fill_pipe(writer)
        for i in range(10_000):
            writer.write(f"line {i}")
            assert len(writer.pending) == min(i + 2, 3)  # the waiting page, then 2 lines
        assert writer.dropped_total == 10_000 - 2
        lines = drain(keeper, writer)
        fill_pipe(writer)  # a second stall: its own notice
        for word in ("kept", "kept", "dropped"):
            writer.write(word)
        lines += drain(keeper, writer)
    finally:
        writer.close()
        os.close(keeper)
    notices = [x for x in lines if "lines dropped between" in x]
    assert len(notices) == 2
    assert " 9998 log lines dropped " in notices[0] and " 1 log lines dropped " in notices[1]
    assert writer.dropped_total == 9_999


def test_access_log_drops_are_reported_in_the_main_log(tmp_path: Path) -> None:
    main_keeper = create_pipe(str(tmp_path / "main"))
    access_keeper = create_pipe(str(tmp_path / "access"))
    main = LogLineWriter(str(tmp_path / "main"), name="main log")
    access = LogLineWriter(str(tmp_path / "access"), max_buffered=2, name="access log",
                           notices=main)
    try:
        fill_pipe(access)
        for i in range(7):
            access.write(f"GET /{i}")
        access_lines = drain(access_keeper, access)
        main_lines = drain(main_keeper, main)
    finally:
        main.close()
        access.close()
        os.close(main_keeper)
        os.close(access_keeper)
    assert not [x for x in access_lines if "dropped" in x]  # access log stays parseable
    assert [x for x in access_lines if x.startswith("GET")] == ["GET /0"]
    assert len(main_lines) == 1 and " 6 access log lines dropped between " in main_lines[0]
    assert access.dropped_total == 6
