"""passenger: Passenger Standalone's command.

Usage:
  passenger start [APP_DIR] [options]
  passenger (-h | --help)
  passenger --version

Server options:
  -a HOST, --address HOST          Bind to the given address. Default: 0.0.0.0
  -p NUMBER, --port NUMBER         Use the given port number. Default: 3000
  -S FILE, --socket FILE           Bind to Unix domain socket instead of TCP socket
  --log-file PATH                  Where to write log messages. Default:
                                   log/passenger.<port>.log in the app dir if log/
                                   exists, else passenger.<port>.log there
  --log-level LEVEL                debug, info, warning or error. Default: info
  --instance-registry-dir PATH     Use the given instance registry directory

Application loading options:
  -e NAME, --environment NAME      Web framework environment. Default: development
  --python FILENAME                Executable to use for Python apps.
                                   Default: the Python running this command
  --startup-file FILENAME          The WSGI file. Default: passenger_wsgi.py

Process management options:
  --max-pool-size NUMBER           Maximum number of application processes. Default: 6
  --min-instances NUMBER           Minimum number of processes per application. Default: 1
  --start-timeout SECONDS          Time an application process may take to start.
                                   Default: 90

Every option can also be set as PASSENGER_<OPTION> in the environment (for example
PASSENGER_MAX_POOL_SIZE=4) or in Passengerfile.json in the app dir ({"max_pool_size": 4});
the command line wins over the environment, which wins over the file.
"""

from __future__ import annotations

import os
import sys

from docopt import DocoptExit, docopt

from passenger.common import VERSION
from passenger.common.config import OPTIONS, ConfigError, resolve
from passenger.common.executables import find_executable
from passenger.common.startup_protocol import encode_document


def cli_values(args: dict[str, object]) -> dict[str, object]:
    values: dict[str, object] = {"app_root": args.get("APP_DIR")}
    for key, value in args.items():
        if key.startswith("--"):
            name = key[2:].replace("-", "_")
            if name in OPTIONS:
                values[name] = value
    return values


def start(args: dict[str, object]) -> None:
    try:
        config = resolve(cli_values(args))
        watchdog = find_executable("PassengerWatchdog")
    except (ConfigError, FileNotFoundError) as exc:
        print(f"passenger start: {exc}", file=sys.stderr)
        sys.exit(1)
    read_fd, write_fd = os.pipe()
    os.write(write_fd, encode_document({"config": config.to_json()}))
    os.close(write_fd)
    os.set_inheritable(read_fd, True)
    os.execv(watchdog, [watchdog, "--config-fd", str(read_fd)])


def main(argv: list[str] | None = None) -> None:
    try:
        args = docopt(__doc__, argv=argv, version=f"Passenger {VERSION}")
    except DocoptExit as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    if args["start"]:
        start(args)


if __name__ == "__main__":
    main()
