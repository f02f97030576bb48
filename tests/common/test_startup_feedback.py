"""The start-up feedback line has one writer (app_protocol's, which the app-side loader
loads; startup_protocol re-exports it): what it writes is what parse_feedback reads, and
the pipe is closed after the one line."""

from __future__ import annotations

import os

from passenger.common import app_protocol, startup_protocol
from passenger.common.startup_protocol import parse_feedback, report_error, report_ready


def written(report: object, *args: object, **facts: object) -> bytes:
    read_end, write_end = os.pipe()
    try:
        report(write_end, *args, **facts)  # type: ignore[operator]
        data = b""
        while chunk := os.read(read_end, 65536):  # EOF: the writer closed its end
            data += chunk
        return data
    finally:
        os.close(read_end)


def test_startup_protocol_writes_with_app_protocols_functions() -> None:
    assert startup_protocol.report_ready is app_protocol.report_ready
    assert startup_protocol.report_error is app_protocol.report_error
    assert startup_protocol.encode_document is app_protocol.encode_document


def test_ready_with_facts_is_one_line_that_parses_back() -> None:
    line = written(report_ready, pid=42, unsafe="")
    assert line == b'{"status":"ready","pid":42,"unsafe":""}\n'
    assert parse_feedback(line.rstrip(b"\n")) == {"status": "ready", "pid": 42, "unsafe": ""}


def test_an_error_keeps_its_message_and_a_multi_line_traceback_on_one_line() -> None:
    tb = "Traceback (most recent call last):\n  ...\nImportError: no\n"
    line = written(report_error, "ImportError: no", traceback=tb)
    assert line.count(b"\n") == 1
    assert parse_feedback(line) == {"status": "error", "message": "ImportError: no",
                                    "traceback": tb}
