"""PassengerLoggingAgent entry point: the one writer of log files.

Reads log records from `<instance>/logging.fifo` (opened read-write, so it never sees EOF
when writers come and go), formats them and writes the main log; SIGHUP reopens it.
Stops on SIGTERM after draining the pipe, or when its lifeline (stdin) closes.
"""

from __future__ import annotations

import os
import selectors
import signal
import sys
from types import FrameType

from passenger.common.log_records import decode_record
from passenger.common.process_title import LOGGING_AGENT, set_title
from passenger.common.startup_protocol import read_startup_document, report_error, report_ready
from passenger.logging_agent.sinks import LogFile, Terminal, format_record

received: list[int] = []


def _record_signal(signum: int, frame: FrameType | None) -> None:
    received.append(signum)


class LoggingAgent:
    def __init__(self, fifo_path: str, sinks: list[LogFile | Terminal]) -> None:
        self.fifo_fd = os.open(fifo_path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.sinks = sinks
        self.partial = b""

    def drain(self) -> None:
        while True:
            try:
                data = os.read(self.fifo_fd, 65536)
            except BlockingIOError:
                return
            if not data:
                return
            self._write(data)

    def _write(self, data: bytes) -> None:
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        out = []
        for line in lines:
            record = decode_record(line)
            if record is not None:
                out.append(format_record(record))
        if out:
            for sink in self.sinks:
                sink.write_lines(out)

    def run(self) -> int:
        sel = selectors.DefaultSelector()
        sel.register(self.fifo_fd, selectors.EVENT_READ)
        sel.register(sys.stdin.fileno(), selectors.EVENT_READ)
        while True:
            for key, _ in sel.select(timeout=0.5):
                if key.fd == self.fifo_fd:
                    self.drain()
                elif not os.read(key.fd, 4096):
                    sel.unregister(key.fd)
                    received.append(signal.SIGTERM)  # lifeline closed: watchdog gone
            while received:
                signum = received.pop(0)
                if signum == signal.SIGHUP:
                    for sink in self.sinks:
                        sink.reopen()
                else:
                    self.drain()
                    for sink in self.sinks:
                        sink.close()
                    return 0


def main() -> None:
    set_title(LOGGING_AGENT)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _record_signal)
    doc = read_startup_document()
    feedback_fd = int(doc["feedback_fd"])
    try:
        sinks: list[LogFile | Terminal] = [LogFile(str(doc["log_file"]))]
    except OSError as exc:
        report_error(feedback_fd, f"cannot open the log file {doc['log_file']}: "
                                  f"{exc.strerror}")
        sys.exit(1)
    if doc.get("echo_to_terminal"):
        sinks.append(Terminal())
    agent = LoggingAgent(str(doc["fifo"]), sinks)
    report_ready(feedback_fd, pid=os.getpid())
    sys.exit(agent.run())


if __name__ == "__main__":
    main()
