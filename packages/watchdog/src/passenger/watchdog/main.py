"""PassengerWatchdog entry point. `passenger start` execs us with the configuration on an
inherited pipe (`--config-fd N`); when daemonizing, it waits on `--ready-fd M` for our
one-line report (ready with the banner, or the error).

We bind the listening socket (so a restarted helper agent inherits it and clients wait in
the backlog instead of being refused), create and lock the instance directory and its
logging pipes, start the logging agent and the helper agent side by side, and supervise
them until SIGINT/SIGTERM. SIGUSR1 asks the logging agent to reopen its files.

The watchdog idles for the server's whole life, so it stays small: its own event loop
(`event_loop`) instead of asyncio, posix_spawn instead of subprocess, its own log lines
instead of `logging`, and the configuration as a plain document (`settings`).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys

from passenger.common import pid_file
from passenger.common.child_watcher import ChildWatcher
from passenger.common.executables import find_executable
from passenger.common.log_records import LogLineWriter, create_pipe
from passenger.common.owned_instance_dir import OwnedInstanceDir, UnsafePath, registry_path
from passenger.common.process_title import WATCHDOG, set_title
from passenger.common.standalone import ConfigError
from passenger.common.startup_protocol import report_error, report_ready
from passenger.watchdog import log as watchdog_log
from passenger.watchdog.agent_process import AgentProcess
from passenger.watchdog.event_loop import EventLoop
from passenger.watchdog.listeners import bind_listener, bind_metrics
from passenger.watchdog.settings import WatchdogSettings
from passenger.watchdog.supervisor import Supervisor
from passenger.watchdog.systemd_notify import SystemdNotifier

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket

    from passenger.watchdog.event_loop import Timer

log = watchdog_log.Logger("main")
LOGGING_STOP_TIMEOUT = 5.0
LOG_FLUSH_INTERVAL = 1.0
HELPER_STOP_EXTRA = 10.0  # beyond --graceful-timeout, for stopping the app processes
USAGE = "usage: PassengerWatchdog --config-fd N [--ready-fd M]  (started by `passenger start`)"


class Reporter:
    """Where the outcome of start-up goes: the terminal, or the waiting `passenger start`
    parent when daemonized."""

    def __init__(self, ready_fd: int | None) -> None:
        self.ready_fd = ready_fd

    def ready(self, banner: str) -> None:
        if self.ready_fd is None:
            print(banner, flush=True)
        else:
            report_ready(self.ready_fd, banner=banner)
            self.ready_fd = None

    def error(self, message: str) -> None:
        if self.ready_fd is None:
            print(f"*** ERROR: {message}", file=sys.stderr, flush=True)
        else:
            report_error(self.ready_fd, message)
            self.ready_fd = None


class Watchdog:
    def __init__(self, settings: WatchdogSettings, listener: _socket.socket,
                 instance: OwnedInstanceDir, reporter: Reporter,
                 log_writer: LogLineWriter, metrics: _socket.socket | None = None) -> None:
        self.settings = settings
        self.instance = instance
        self.reporter = reporter
        self.log_writer = log_writer
        self.loop = EventLoop()
        channels = [{"fifo": instance.logging_fifo, "file": settings.log_file,
                     "echo": not settings.daemonize}]
        if settings.access_log:
            channels.append({"fifo": instance.access_fifo, "file": settings.access_log})
        children = ChildWatcher(lambda: self.loop)  # learns of both agents' exits
        self.logging_agent = AgentProcess(
            self.loop, "PassengerLoggingAgent", find_executable("PassengerLoggingAgent"),
            lambda: {"channels": channels}, children=children)
        metrics_fd = metrics.fileno() if metrics is not None else None
        self.helper_agent = AgentProcess(
            self.loop, "PassengerHelperAgent", find_executable("PassengerHelperAgent"),
            lambda: {"config": settings.document, "instance_dir": instance.path,
                     "listen_fd": listener.fileno(), "metrics_fd": metrics_fd},
            pass_fds=(listener.fileno(),) + ((metrics_fd,) if metrics_fd is not None else ()),
            children=children)
        self.supervisor = Supervisor(self.loop, [self.logging_agent, self.helper_agent])
        self.systemd = SystemdNotifier()  # before any agent starts: they must not inherit it
        self.stop_signal = ""  # the first SIGINT/SIGTERM's name, once one came
        self._flush_timer: Timer | None = None
        self._drops_told = (0, 0)  # (our dropped lines, to which helper agent PID)

    def _on_stop_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if not self.stop_signal:
            self.stop_signal = name
            log.info(f"Received {name}; shutting down gracefully (again to force)")
        else:
            log.warning(f"Received {name} again; stopping at once")
            self.supervisor.kill_all()

    def _on_reopen_logs(self, signum: int) -> None:
        if self.logging_agent.pid:
            try:
                os.kill(self.logging_agent.pid, signal.SIGHUP)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        self.loop.handle_signals({signal.SIGINT: self._on_stop_signal,
                                  signal.SIGTERM: self._on_stop_signal,
                                  signal.SIGUSR1: self._on_reopen_logs})
        self.supervisor.start_all()
        self.loop.run_until(lambda: self.supervisor.started or bool(self.stop_signal))
        if not self.supervisor.started:
            self.reporter.error(f"stopped by {self.stop_signal} while starting")
            self.supervisor.stop_all(self.stop_timeouts())
            return 0
        error = self.supervisor.startup_error()
        if error is not None:
            self.reporter.error(str(error))
            self.supervisor.stop_all({})
            return 1
        self.instance.finalize()
        self.reporter.ready(self.banner())
        summary = f"Serving {self.settings.app_root} on {self.settings.listen_url}"
        self.systemd.notify("READY=1", f"STATUS={summary}", f"MAINPID={os.getpid()}")
        self._flush_timer = self.loop.call_later(LOG_FLUSH_INTERVAL, self._flush_log)
        self.systemd.keep_alive(self.loop, self.instance.admin_socket)
        self.loop.run_until(lambda: bool(self.stop_signal))
        self.systemd.notify("STOPPING=1", "STATUS=Stopping: finishing requests, then "
                                          "stopping the app processes")
        self.systemd.stop_keep_alive()
        self._flush_timer.cancel()
        self.supervisor.stop_all(self.stop_timeouts())
        return 0

    def stop_timeouts(self) -> dict[str, float]:
        return {"PassengerHelperAgent": self.settings.graceful_timeout + HELPER_STOP_EXTRA,
                "PassengerLoggingAgent": LOGGING_STOP_TIMEOUT}

    def _flush_log(self) -> None:
        """Deliver our log lines held while the logging pipe was full, and tell the
        helper agent how many we dropped (passenger-status shows it)."""
        self._flush_timer = self.loop.call_later(LOG_FLUSH_INTERVAL, self._flush_log)
        writer = self.log_writer
        if writer.pending or writer.dropped:
            writer.flush()
        news = (writer.dropped_total, self.helper_agent.pid)
        if writer.dropped_total and news != self._drops_told and self.helper_agent.tell(
                {"watchdog_log_lines_dropped": writer.dropped_total}):
            self._drops_told = news

    def stop_command(self) -> str:
        """One that works as printed, from any directory."""
        if self.settings.explicit_pid_file:
            return f"passenger stop --pid-file {shlex.quote(self.settings.pid_file)}"
        return (f"passenger stop {shlex.quote(self.settings.app_root)} "
                f"--port {self.settings.port}")

    def banner(self) -> str:
        return "\n".join([
            "=============== Passenger Standalone web server started ===============",
            f"PID file: {self.settings.pid_file}",
            f"Log file: {self.settings.log_file}",
            f"Environment: {self.settings.environment}",
            f"Accessible via: {self.settings.listen_url}",
            f"Instance: {self.instance.name} ({self.instance.path})",
            "",
            f"Serving in the background as a daemon.\nShutdown with: {self.stop_command()}"
            if self.settings.daemonize else
            "You can stop Passenger Standalone by pressing Ctrl-C.",
            "=======================================================================",
        ])

    def close(self) -> None:
        self.systemd.close()
        self.loop.close()


def parse_arguments(argv: list[str]) -> tuple[int, int | None]:
    """`--config-fd N [--ready-fd M]` -> (N, M or None); exits 2 on anything else."""
    values: dict[str, int] = {}
    args = iter(argv)
    for arg in args:
        name, sep, value = arg.partition("=")
        if name not in ("--config-fd", "--ready-fd"):
            sys.exit(f"{USAGE}\nPassengerWatchdog: unknown argument {arg!r}")
        value = value if sep else next(args, "")
        if not value.isdigit():
            sys.exit(f"{USAGE}\nPassengerWatchdog: {name} needs a descriptor number")
        values[name] = int(value)
    if "--config-fd" not in values:
        sys.exit(f"{USAGE}\nPassengerWatchdog: --config-fd is required")
    return values["--config-fd"], values.get("--ready-fd")


def main() -> None:
    config_fd, ready_fd = parse_arguments(sys.argv[1:])
    set_title(WATCHDOG)
    reporter = Reporter(ready_fd)
    with os.fdopen(config_fd, "rb") as f:
        doc = json.loads(f.read())
    pid_path = ""
    try:
        settings = WatchdogSettings(doc["config"])
        pid_path = settings.pid_file
        pid_file.claim(pid_path)
        metrics = bind_metrics(settings)  # first: a failure leaves no --socket file behind
        listener = bind_listener(settings)
    except (ConfigError, pid_file.PidFileError) as exc:
        if pid_path:
            pid_file.release(pid_path)
        reporter.error(str(exc))
        sys.exit(1)
    try:
        instance = OwnedInstanceDir.create(registry_path(settings.instance_registry_dir), {
            "listen": settings.listen_url, "app_roots": [settings.app_root],
            "pid_file": pid_path})
    except (UnsafePath, OSError) as exc:
        listener.close()
        pid_file.release(pid_path)
        reporter.error(str(exc))
        sys.exit(1)
    keepers = [create_pipe(instance.logging_fifo), create_pipe(instance.access_fifo)]
    writer = LogLineWriter(instance.logging_fifo, name="main log")
    watchdog_log.configure(writer, settings.log_level)
    watchdog = None
    try:
        watchdog = Watchdog(settings, listener, instance, reporter, writer, metrics)
        code = watchdog.run()
    except FileNotFoundError as exc:  # an agent is not installed
        reporter.error(str(exc))
        code = 1
    finally:
        if watchdog is not None:
            watchdog.close()
        try:
            writer.close()
        except Exception:
            pass
        for fd in keepers:
            os.close(fd)
        instance.close_and_remove()
        pid_file.release(pid_path)
        if settings.socket:
            try:
                os.unlink(settings.socket)
            except OSError:
                pass
    sys.exit(code)


if __name__ == "__main__":
    main()
