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


def run(channels: list[LogChannel]) -> int:
    # epoll itself: the selectors module around it would cost this agent 0.1 MB.
    epoll = select.epoll()
    watched: dict[int, LogChannel | str] = {}

    def watch(fd: int, what: LogChannel | str) -> None:
        epoll.register(fd, select.EPOLLIN)
        watched[fd] = what

    def unwatch(fd: int) -> None:
        epoll.unregister(fd)
        del watched[fd]

    for channel in channels:
        watch(channel.fifo_fd, channel)
    watch(sys.stdin.fileno(), "lifeline")
    wakeup_r, wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wakeup_w)  # a signal wakes epoll at once
    watch(wakeup_r, "signal")
    failing: dict[LogChannel, WriteFailure] = {}
    notices: list[str] = []  # for the main log, once it can be written

    def pump(channel: LogChannel) -> None:
        channel.pump()
        if channel.failure and channel not in failing:
            failing[channel] = channel.failure
            unwatch(channel.fifo_fd)  # readable until written: do not spin
            print(f"PassengerLoggingAgent: cannot write {channel.file_path}: "
                  f"{channel.failure.error}; its lines wait in the logging pipe, retrying "
                  f"each second", file=sys.stderr, flush=True)
        elif not channel.failure and channel in failing:
            notices.append(recovery_notice(channel, failing.pop(channel)))
            watch(channel.fifo_fd, channel)
        if notices and channels[0] not in failing and channel is channels[0]:
            try:
                while notices:
                    channels[0].write_line(notices[0])
                    notices.pop(0)
            except OSError:
                pass  # the next pump says so

    while True:
        for fd, _ in epoll.poll(RETRY_INTERVAL if failing else 5.0):
            what = watched.get(fd)
            if isinstance(what, LogChannel):
                pump(what)
            elif what == "signal":
                os.read(wakeup_r, 4096)
            elif what == "lifeline" and not os.read(fd, 4096):
                unwatch(fd)
                received.append(signal.SIGTERM)  # lifeline closed: the watchdog is gone
        for channel in list(failing):
            pump(channel)
        if notices and channels[0] not in failing:
            pump(channels[0])
        while received:
            if received.pop(0) == signal.SIGHUP:
                for channel in channels:
                    pump(channel)
                    try:
                        channel.reopen()
                    except OSError as exc:  # keep writing the old file
                        print(f"PassengerLoggingAgent: cannot reopen {channel.file_path} "
                              f"(still writing the file opened before): {exc.strerror}",
                              file=sys.stderr, flush=True)
                continue
            for channel in channels:
                pump(channel)
                channel.close()
            return 0


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
