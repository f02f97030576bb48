"""PassengerLoggingAgent entry point: the one writer of log files.

Drains each logging pipe (main log, and the access log when configured) into its file;
SIGHUP reopens the files (logrotate). Stops on SIGTERM after draining the pipes, or when
its lifeline (stdin) closes.
"""

from __future__ import annotations

import os
import selectors
import signal
import sys
from types import FrameType

from passenger.common.process_title import LOGGING_AGENT, set_title
from passenger.common.startup_protocol import read_startup_document, report_error, report_ready
from passenger.logging_agent.sinks import LogChannel

received: list[int] = []


def _record_signal(signum: int, frame: FrameType | None) -> None:
    received.append(signum)


def run(channels: list[LogChannel]) -> int:
    sel = selectors.DefaultSelector()
    for channel in channels:
        sel.register(channel.fifo_fd, selectors.EVENT_READ, channel)
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ, "lifeline")
    wakeup_r, wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wakeup_w)  # a signal wakes select() at once
    sel.register(wakeup_r, selectors.EVENT_READ, "signal")
    while True:
        for key, _ in sel.select(timeout=5.0):
            if isinstance(key.data, LogChannel):
                key.data.pump()
            elif key.data == "signal":
                os.read(wakeup_r, 4096)
            elif not os.read(key.fd, 4096):
                sel.unregister(key.fd)
                received.append(signal.SIGTERM)  # lifeline closed: the watchdog is gone
        while received:
            if received.pop(0) == signal.SIGHUP:
                for channel in channels:
                    channel.pump()
                    channel.reopen()
                continue
            for channel in channels:
                channel.pump()
                channel.close()
            return 0


def main() -> None:
    set_title(LOGGING_AGENT)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _record_signal)
    doc = read_startup_document()
    feedback_fd = int(doc["feedback_fd"])
    channels = []
    for spec in doc["channels"]:
        try:
            echo = sys.stdout.buffer if spec.get("echo") else None
            channels.append(LogChannel(spec["fifo"], spec["file"], echo))
        except OSError as exc:
            report_error(feedback_fd, f"cannot open the log file {spec['file']}: "
                                      f"{exc.strerror}")
            sys.exit(1)
    report_ready(feedback_fd, pid=os.getpid())
    sys.exit(run(channels))


if __name__ == "__main__":
    main()
