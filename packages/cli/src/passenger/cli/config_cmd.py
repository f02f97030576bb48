"""passenger-config: administer running instances.

Usage:
  passenger-config list-instances [--json]
  passenger-config reopen-logs [NAME]
  passenger-config (-h | --help)
  passenger-config --version

Commands:
  list-instances    List the running Passenger instances (stale ones are cleaned).
  reopen-logs       Make the logging agent reopen its log files (after logrotate).
"""

from __future__ import annotations

import json
import os
import signal
import sys

from docopt import DocoptExit, docopt

from passenger.cli.instances import NoInstance, describe, live_instances, select_instance
from passenger.common import VERSION


def list_instances(as_json: bool) -> None:
    instances = live_instances()
    if as_json:
        print(json.dumps([{"name": n, "watchdog_pid": p, "description": d,
                           "instance_dir": str(i.path)}
                          for i, (n, p, d) in ((i, describe(i)) for i in instances)],
                         indent=2))
        return
    if not instances:
        print("There are no Passenger instances running.")
        return
    print(f"{'Name':<10} {'PID':<8} Description")
    print("-" * 60)
    for inst in instances:
        name, pid, desc = describe(inst)
        print(f"{name:<10} {pid:<8} {desc}")


def reopen_logs(name: str | None) -> None:
    try:
        instance = select_instance(name)
        pid = int(instance.properties()["watchdog_pid"])
    except NoInstance as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
    os.kill(pid, signal.SIGUSR1)  # the watchdog passes it on to the logging agent
    print(f"Asked instance {describe(instance)[0]} to reopen its log files.")


def main(argv: list[str] | None = None) -> None:
    try:
        args = docopt(__doc__, argv=argv, version=f"Passenger {VERSION}")
    except DocoptExit as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    if args["list-instances"]:
        list_instances(args["--json"])
    elif args["reopen-logs"]:
        reopen_logs(args["NAME"])


if __name__ == "__main__":
    main()
