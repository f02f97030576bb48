"""Passenger Standalone, the easiest way to run web apps.

Usage:
  passenger <command> [<args>...]
  passenger (-h | --help)
  passenger --version

Available commands:
  passenger start      Start Passenger Standalone.
  passenger stop       Stop a Passenger Standalone instance.
  passenger status     Show the status of a running Passenger Standalone instance.

Run 'passenger <command> --help' for more information about each command.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

from passenger.cli.command_line import entry_point, parse
from passenger.common import VERSION, pid_file
from passenger.common.config import OPTIONS, ConfigError, ServerConfig
from passenger.common.config_sources import resolve
from passenger.common.executables import find_executable
from passenger.common.startup_protocol import encode_document, parse_feedback

START_USAGE = """Start Passenger Standalone and serve the app in APP_DIR (default: .).

Usage:
  passenger start [APP_DIR] [--app SPEC]... [options]

Server options:
  -a HOST, --address HOST          Bind to the given address. Default: 0.0.0.0
  -p NUMBER, --port NUMBER         Use the given port number. Default: 3000
  -S FILE, --socket FILE           Bind to Unix domain socket instead of TCP socket
  -d, --daemonize                  Daemonize into the background
  --pid-file FILE                  Where to store the PID file. Default:
                                   tmp/pids/passenger.<port>.pid in the app dir if
                                   tmp/pids/ exists, else passenger.<port>.pid there
  --log-file PATH                  Where to write log messages. Default:
                                   log/passenger.<port>.log in the app dir if log/
                                   exists, else passenger.<port>.log there
  --log-level LEVEL                debug, info, warning or error. Default: info
  --access-log PATH                Write an access log (combined format, then the
                                   request's duration in seconds and the app PID)
  --instance-registry-dir PATH     Use the given instance registry directory

Application loading options:
  -e NAME, --environment NAME      Web framework environment. Default: development
  --python FILENAME                Executable to use for Python apps.
                                   Default: the Python running this command
  --startup-file FILENAME          The WSGI file. Default: passenger_wsgi.py
  --user USERNAME                  When running as root, run the app's processes as this
                                   user. Default: the owner of the startup file, and
                                   never root unless asked (--user root): nobody then
  --app-start-command COMMAND      Run this command instead (any language): it must
                                   serve HTTP on the port given in $PORT
  --spawn-method NAME              smart (load the app once in a preloader, then fork
                                   each process from it) or direct. Default: smart
  --max-preloader-idle-time SECONDS
                                   Stop an unused preloader after this long (0: never).
                                   Default: 300
  --concurrency-model NAME         process (one request at a time per process) or
                                   thread. Default: process
  --thread-count NUMBER            Requests at once per process with the thread model.
                                   Default: 1
  --friendly-error-pages           Show spawn errors in detail in the browser (the
                                   default unless the environment is staging or
                                   production)
  --no-friendly-error-pages        Show a plain error page instead
  --restart-dir PATH               Where restart.txt and always_restart.txt are, relative
                                   to the app dir. Default: tmp
  --stat-throttle-rate SECONDS     Look at restart.txt at most this often. Default: 10

Several apps in one server:
  --app SPEC                       Serve another app: [HOST][/BASE_URI]=PATH, e.g.
                                   example.com=/srv/site or /blog=/srv/blog (repeatable;
                                   Passengerfile.json "apps" takes per-app options too).
                                   With --app, only the listed apps are served.

Process management options:
  --max-pool-size NUMBER           Maximum number of application processes. Default: 6
  --min-instances NUMBER           Minimum number of processes per application. Default: 1
  --max-instances-per-app NUMBER   Maximum processes per application (0: no limit).
                                   Default: 0
  --pool-idle-time SECONDS         Stop a process idle this long, never going below
                                   the minimum number of processes (0: never).
                                   Default: 300
  --memory-limit MB                Replace a process whose private dirty RSS exceeds
                                   this (0: no limit). Default: 0
  --max-requests NUMBER            Replace a process after this many requests
                                   (0: never). Default: 0
  --max-requests-jitter NUMBER     Add 0..N to each process's maximum number of
                                   requests so that processes do not recycle together.
                                   Default: 0

Request handling options:
  --max-request-queue-size NUMBER  Requests an app may queue (0: no limit). Default: 100
  --request-queue-overflow-status-code CODE
                                   Status when the queue is full. Default: 503
  --max-request-queue-time SECONDS A request waiting longer gets 504 (0: no limit).
                                   Default: 0
  --max-request-time SECONDS       A request running longer gets 504 and its process is
                                   replaced (0: no limit). Default: 0
  --start-timeout SECONDS          Time an application process may take to start.
                                   Default: 90
  --graceful-timeout SECONDS       On stop, time in-flight requests may take to finish
                                   before their processes are stopped. Default: 30

HTTP options (the limits have gunicorn's names):
  --limit-request-line BYTES       Longest request line; longer gets 414 (0: the
                                   largest, 65536). Default: 8190
  --limit-request-fields NUMBER    Most header fields in a request; more gets 431
                                   (0: the largest, 32768). Default: 100
  --limit-request-field-size BYTES
                                   Longest header field line; longer gets 431 (0: the
                                   largest, 65536). Default: 8190
  --forwarded-allow-ips LIST       Proxies whose X-Forwarded-Proto, X-Forwarded-Ssl and
                                   Forwarded headers set the URL scheme: addresses or
                                   networks, comma-separated, or * for all.
                                   Default: 127.0.0.1,::1
  --no-server-header               Send no Server header
  --no-static-files                Do not serve APP_DIR/public directly (default:
                                   files there are served without the app)
  --no-request-buffering           Stream request bodies to the app as they arrive
                                   (default: read them whole first, in memory up to
                                   128 KiB, then in a file in the instance directory)
  --client-max-body-size MB        Largest request body; larger gets 413 (0: no limit).
                                   Default: 1024

Timeouts and connections (nginx's names and meanings):
  --client-header-timeout SECONDS  A request head must arrive whole within this, else
                                   408 and close. Default: 60
  --client-body-timeout SECONDS    Longest wait between two reads of a request body,
                                   else 408 and close. Default: 60
  --send-timeout SECONDS           Longest wait between two writes to a client that
                                   does not read, else close. Default: 60
  --keepalive-timeout SECONDS      An idle kept-alive connection is closed after this
                                   (0: no keep-alive). Default: 75
  --max-connections NUMBER         Client connections at once; more wait in the
                                   backlog (0: what the descriptor limit allows).
                                   Default: 0

Operations:
  --metrics-address HOST:PORT      Serve /metrics (Prometheus), /healthz and /readyz
                                   there (off by default; keep it private)

Every option can also be set as PASSENGER_<OPTION> in the environment (for example
PASSENGER_MAX_POOL_SIZE=4) or in Passengerfile.json in the app dir ({"max_pool_size": 4});
the command line wins over the environment, which wins over the file.
"""

STOP_USAGE = """Stop a running Passenger Standalone instance, found by its PID file.

Usage:
  passenger stop [APP_DIR] [options]

Options:
  -p NUMBER, --port NUMBER     The port number of the instance. Default: 3000
  --pid-file FILE              PID file of the running instance
  -i, --ignore-pid-not-found   Don't fail if the PID file cannot be found
"""

STATUS_USAGE = """Show the status of a running Passenger Standalone instance.

Usage:
  passenger status [APP_DIR] [options]

Options:
  -p NUMBER, --port NUMBER     The port number of the instance. Default: 3000
  --pid-file FILE              PID file of the running instance
"""

STOP_TIMEOUT = 120.0  # covers --graceful-timeout's default and the app processes' exit
DAEMON_START_TIMEOUT = 300.0


def cli_values(args: dict[str, object]) -> dict[str, object]:
    values: dict[str, object] = {"app_root": args.get("APP_DIR"),
                                 "apps": args.get("--app") or None}
    if args.get("--friendly-error-pages") or args.get("--no-friendly-error-pages"):
        values["friendly_error_pages"] = str(bool(args["--friendly-error-pages"])).lower()
    if args.get("--no-server-header"):
        values["server_header"] = False
    if args.get("--no-request-buffering"):
        values["request_buffering"] = False
    if args.get("--no-static-files"):
        values["static_files"] = False
    for key, value in args.items():
        if key.startswith("--"):
            name = key[2:].replace("-", "_")
            if name in OPTIONS and name not in values:
                # An absent flag is "not given", so that lower-precedence sources count.
                values[name] = None if value is False else value
    return values


def start(args: dict[str, object]) -> None:
    try:
        config = resolve(cli_values(args))
        watchdog = find_executable("PassengerWatchdog")
    except (ConfigError, FileNotFoundError) as exc:
        print(f"passenger start: {exc}", file=sys.stderr)
        sys.exit(1)
    config_r, config_w = os.pipe()
    os.write(config_w, encode_document({"config": config.to_json()}))
    os.close(config_w)
    os.set_inheritable(config_r, True)
    argv = [watchdog, "--config-fd", str(config_r)]
    if not config.daemonize:
        os.execv(watchdog, argv)
    ready_r, ready_w = os.pipe()
    if os.fork() == 0:  # the daemon: its own session, no terminal
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(ready_r)
        os.set_inheritable(ready_w, True)
        os.execv(watchdog, [*argv, "--ready-fd", str(ready_w)])
    os.close(ready_w)
    os.close(config_r)
    sys.exit(wait_for_daemon(ready_r))


def wait_for_daemon(ready_fd: int) -> int:
    """Print the daemon's banner once it is ready, or its error."""
    readable, _, _ = select.select([ready_fd], [], [], DAEMON_START_TIMEOUT)
    if not readable:
        print(f"*** ERROR: the server did not report readiness within "
              f"{DAEMON_START_TIMEOUT:.0f} s; see its log file", file=sys.stderr)
        return 1
    with os.fdopen(ready_fd, "rb") as f:
        report = parse_feedback(f.readline())
    if report["status"] == "ready":
        print(report.get("banner", ""))
        return 0
    print(f"*** ERROR: {report.get('message')}", file=sys.stderr)
    return 1


def locate_pid_file(args: dict[str, object]) -> str:
    if args.get("--pid-file"):
        return os.path.abspath(str(args["--pid-file"]))
    app_root = os.path.abspath(str(args["APP_DIR"] or "."))
    port = args["--port"] or os.environ.get("PASSENGER_PORT") or 3000
    try:
        config = ServerConfig.from_json({"app_root": app_root, "port": port})
    except ConfigError as exc:
        print(f"passenger: {exc}", file=sys.stderr)
        sys.exit(2)
    return config.default_pid_file()


def running_pid(path: str) -> int | None:
    from passenger.cli import processes  # psutil: 35 ms that `passenger start` need not pay

    pid = pid_file.read_pid(path)
    return pid if pid is not None and processes.alive(pid) else None


def stop(args: dict[str, object]) -> None:
    path = locate_pid_file(args)
    pid = running_pid(path)
    if pid is None:
        if args.get("--ignore-pid-not-found"):
            return
        why = "stale PID file" if os.path.exists(path) else "no PID file"
        print(f"passenger stop: Passenger Standalone is not running ({why} at {path})",
              file=sys.stderr)
        sys.exit(1)
    from passenger.cli import processes

    if not processes.names_our_watchdog(path, pid):
        print(f"passenger stop: PID {pid} in {path} is not a Passenger watchdog started "
              f"before that file was written (a stale PID file?); not signalling it",
              file=sys.stderr)
        sys.exit(1)
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError as exc:
        print(f"passenger stop: cannot signal PID {pid}: {exc.strerror}", file=sys.stderr)
        sys.exit(1)
    deadline = time.monotonic() + STOP_TIMEOUT
    while processes.alive(pid):
        if time.monotonic() > deadline:
            print(f"passenger stop: PID {pid} did not stop within {STOP_TIMEOUT:.0f} s",
                  file=sys.stderr)
            sys.exit(1)
        time.sleep(0.05)


def status(args: dict[str, object]) -> None:
    path = locate_pid_file(args)
    pid = running_pid(path)
    if pid is None:
        print(f"Passenger Standalone is not running, according to PID file {path}")
        sys.exit(1)
    print(f"Passenger Standalone is running on PID {pid}, according to PID file {path}")


COMMANDS = {"start": (START_USAGE, start), "stop": (STOP_USAGE, stop),
            "status": (STATUS_USAGE, status)}


@entry_point
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    top = parse(__doc__ or "", argv, "passenger", version=f"Passenger {VERSION}",
                options_first=True)
    command = str(top["<command>"])
    if command not in COMMANDS:
        print(f"passenger: unknown command {command!r}; allowed: {', '.join(COMMANDS)}",
              file=sys.stderr)
        sys.exit(2)
    usage, run = COMMANDS[command]
    run(parse(usage, argv, f"passenger {command}"))


if __name__ == "__main__":
    main()
