"""PassengerLoggingAgent entry point: the one writer of log files.

Drains each logging pipe (main log, and the access log when configured) into its file;
SIGHUP reopens the files (logrotate). Stops on SIGTERM after draining the pipes, or when
its lifeline (stdin) closes.

When a file cannot be written (a full disk), its lines wait in the pipe: we stop watching
that pipe, say why on stderr at once, retry each second, and once it works again write
what happened (the error, how long, how much waited) into the main log. Writers whose
pipe filled meanwhile count what they dropped and say so themselves.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

from passenger.common.log_records import agent_line, timestamp
from passenger.common.process_title import LOGGING_AGENT, set_title
from passenger.common.startup_protocol import read_startup_document, report_error, report_ready
from passenger.logging_agent.sinks import LogChannel, WriteFailure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType

RETRY_INTERVAL = 1.0
received: list[int] = []


def _record_signal(signum: int, frame: FrameType | None) -> None:
    received.append(signum)


class Drain:
    """The agent's loop: the descriptors epoll watches (the logging pipes, the lifeline,
    the signal wakeup pipe), the channels whose file cannot be written now, and the
    notices waiting for the main log (`channels[0]`)."""

    def __init__(self, channels: list[LogChannel]) -> None:
        self.channels = channels
        # epoll itself: the selectors module around it would cost this agent 0.1 MB.
        self.epoll = select.epoll()
        self.watched: dict[int, LogChannel | str] = {}
        self.failing: dict[LogChannel, WriteFailure] = {}
        self.notices: list[str] = []  # for the main log, once it can be written
        for channel in channels:
            self.watch(channel.fifo_fd, channel)
        self.watch(sys.stdin.fileno(), "lifeline")
        self.wakeup_r, wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wakeup_w)  # a signal wakes epoll at once
        self.watch(self.wakeup_r, "signal")

    def watch(self, fd: int, what: LogChannel | str) -> None:
        self.epoll.register(fd, select.EPOLLIN)
        self.watched[fd] = what

    def unwatch(self, fd: int) -> None:
        self.epoll.unregister(fd)
        del self.watched[fd]

    def run(self) -> int:
        """Until SIGTERM, SIGINT or the lifeline's end; then drain and close. -> 0."""
        while True:
            self.poll()
            while received:
                if received.pop(0) == signal.SIGHUP:
                    self.reopen()
                    continue
                for channel in self.channels:
                    self.pump(channel)
                    channel.close()
                return 0

    def poll(self) -> None:
        """Wait for input (or the next retry), and pump what is due."""
        failing, main = self.failing, self.channels[0]
        for fd, _ in self.epoll.poll(RETRY_INTERVAL if failing else 5.0):
            what = self.watched.get(fd)
            if isinstance(what, LogChannel):
                self.pump(what)
            elif what == "signal":
                os.read(self.wakeup_r, 4096)
            elif what == "lifeline" and not os.read(fd, 4096):
                self.unwatch(fd)
                received.append(signal.SIGTERM)  # lifeline closed: the watchdog is gone
        for channel in list(failing):
            self.pump(channel)
        if self.notices and main not in failing:
            self.pump(main)

    def pump(self, channel: LogChannel) -> None:
        """The channel's pipe into its file; a failure to write it begins or ends here."""
        failing = self.failing
        channel.pump()
        if channel.failure and channel not in failing:
            failing[channel] = channel.failure
            self.unwatch(channel.fifo_fd)  # readable until written: do not spin
            print(f"PassengerLoggingAgent: cannot write {channel.file_path}: "
                  f"{channel.failure.error}; its lines wait in the logging pipe, retrying "
                  f"each second", file=sys.stderr, flush=True)
        elif not channel.failure and channel in failing:
            self.notices.append(recovery_notice(channel, failing.pop(channel)))
            self.watch(channel.fifo_fd, channel)
        main = self.channels[0]
        if self.notices and main not in failing and channel is main:
            self.write_notices(main)

    def write_notices(self, main: LogChannel) -> None:
        notices = self.notices
        try:
            while notices:
                main.write_line(notices[0])
                notices.pop(0)
        except OSError:
            pass  # the next pump says so

    def reopen(self) -> None:
        """SIGHUP (logrotate): what is in the pipes goes to the old files, the rest to
        new ones."""
        for channel in self.channels:
            self.pump(channel)
            try:
                channel.reopen()
            except OSError as exc:  # keep writing the old file
                print(f"PassengerLoggingAgent: cannot reopen {channel.file_path} "
                      f"(still writing the file opened before): {exc.strerror}",
                      file=sys.stderr, flush=True)


def run(channels: list[LogChannel]) -> int:
    return Drain(channels).run()


def recovery_notice(channel: LogChannel, failure: WriteFailure) -> str:
    return agent_line("W", os.getpid(), "logging", (
        f"could not write {channel.file_path} from {timestamp(failure.began)} to "
        f"{timestamp(time.time())}: {failure.error} ({failure.attempts} attempts); up to "
        f"{failure.most_waiting} bytes of log lines waited in the logging pipe meanwhile, "
        f"and are written now (lines that did not fit are counted by their writers)"))


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
