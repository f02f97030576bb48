"""A log channel moves whole lines from its pipe into its file, and a file that cannot be
written leaves them in the pipe, counted as one failure until a pump works again."""

from __future__ import annotations

import os
from pathlib import Path

from passenger.common.log_records import create_pipe
from passenger.logging_agent.sinks import LogChannel


def test_pump_moves_what_the_pipe_holds_and_reopen_follows_a_rename(tmp_path: Path) -> None:
    fifo, log = tmp_path / "logging.fifo", tmp_path / "main.log"
    keeper = create_pipe(str(fifo))
    channel = LogChannel(str(fifo), str(log))
    try:
        os.write(keeper, b"one\ntwo\n")
        assert channel.pump() == 8 and log.read_bytes() == b"one\ntwo\n"
        log.rename(tmp_path / "main.log.1")
        channel.reopen()
        os.write(keeper, b"three\n")
        channel.pump()
        assert log.read_bytes() == b"three\n"
        assert (tmp_path / "main.log.1").read_bytes() == b"one\ntwo\n"
    finally:
        channel.close()
        os.close(keeper)


def test_a_write_failure_keeps_the_lines_in_the_pipe_until_a_pump_works(
        tmp_path: Path) -> None:
    fifo, log = tmp_path / "logging.fifo", tmp_path / "main.log"
    keeper = create_pipe(str(fifo))
    channel = LogChannel(str(fifo), str(log))
    writable = channel.file_fd
    channel.file_fd = os.open(log, os.O_RDONLY)  # every write fails (EBADF)
    try:
        os.write(keeper, b"waiting\n")
        assert channel.pump() == 0 and channel.pump() == 0
        failure = channel.failure
        assert failure is not None and failure.attempts == 2
        assert failure.most_waiting == len(b"waiting\n") and failure.error
        os.close(channel.file_fd)
        channel.file_fd = writable
        assert channel.pump() == len(b"waiting\n") and channel.failure is None
        assert log.read_bytes() == b"waiting\n"
    finally:
        channel.close()
        os.close(keeper)
