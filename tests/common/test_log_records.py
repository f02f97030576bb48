"""Log records fit one atomic pipe write, and writers never block without a reader."""

from __future__ import annotations

import os
from pathlib import Path

from passenger.common.log_records import (
    PIPE_BUF,
    TRUNCATED,
    FifoLogWriter,
    decode_record,
    encode_record,
)


def test_long_message_is_cut_to_one_pipe_write() -> None:
    line = encode_record({"t": 1.0, "pid": 1, "msg": "é" * 10_000})
    assert len(line) <= PIPE_BUF and line.endswith(b"\n")
    record = decode_record(line)
    assert record is not None and record["msg"].endswith(TRUNCATED)


def test_writer_buffers_while_no_reader_and_delivers_later(tmp_path: Path) -> None:
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    writer = FifoLogWriter(str(fifo), max_buffered=3)
    for i in range(5):
        writer.write({"t": 0, "pid": 1, "msg": f"m{i}"})  # returns at once: no reader
    assert len(writer.pending) == 3 and writer.dropped == 2
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert writer.flush()
        lines = os.read(reader, 65536).splitlines()
    finally:
        os.close(reader)
        writer.close()
    messages = [r["msg"] for r in map(decode_record, lines) if r]
    assert messages[0] == "2 log records were dropped while the logging agent was away"
    assert messages[1:] == ["m0", "m1", "m2"]
