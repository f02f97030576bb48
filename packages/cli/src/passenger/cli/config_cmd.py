"""passenger-config: administer running instances.

Usage:
  passenger-config list-instances [--json] [-v]
  passenger-config reopen-logs [--instance NAME]
  passenger-config detach-process [--instance NAME] [--ignore-nonexistant-pid] <PID>
  passenger-config restart-app [--instance NAME] [--ignore-app-not-running]
                               [--rolling-restart] <APP_PATH_PREFIX>
  passenger-config api-call [--instance NAME] [-d DATA] <METHOD> <PATH>
  passenger-config (-h | --help)
  passenger-config --version

Commands:
  list-instances    List the running Passenger instances (stale ones are cleaned).
  reopen-logs       Make the logging agent reopen its log files (after logrotate): of
                    the instance named, or of every running instance.
  detach-process    Remove an app process from the pool and shut it down once its
                    active requests are finished (`kill` would abort them).
  restart-app       Restart every app whose path begins with APP_PATH_PREFIX (`.`: the
                    current directory): its processes shut down, fresh ones spawn.
                    With --rolling-restart, one process at a time, each only once its
                    successor is ready; if the new code fails, the old processes serve on.
  api-call          Call the helper agent's admin API (for scripts): prints the JSON it
                    answers; exit 1 with its error otherwise. Paths: /pool.json,
                    /requests.json, /server.json, /backtraces.json, /ping.json (GET);
                    /pool/detach_process.json, /pool/restart_app_group.json (POST).

Options:
  --instance NAME   The Passenger instance to select (when several run).
  -d DATA           With api-call: the request body, JSON.
  -v                With list-instances: also say which directories in the registry
                    were skipped, and why (not owned by root or you, writable by others).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from passenger.cli.command_line import entry_point, parse
from passenger.cli.instances import (
    NoInstance,
    describe,
    instances_table,
    live_instances,
    select_instance,
)
from passenger.cli.terminal import protect_output
from passenger.common import VERSION, admin_paths
from passenger.common.admin_client import AdminError, request
from passenger.common.instance_dir import InstanceDir


def list_instances(as_json: bool, verbose: bool = False) -> None:
    instances = live_instances(report_skipped=_report_skipped if verbose else None)
    if as_json:
        print(json.dumps([{"name": n, "watchdog_pid": p, "description": d,
                           "instance_dir": str(i.path)}
                          for i, (n, p, d) in ((i, describe(i)) for i in instances)],
                         indent=2))
        return
    if not instances:
        print("There are no Passenger instances running.")
        return
    print(instances_table(instances))


def _report_skipped(path: Path, why: str) -> None:
    print(f"(skipped {path}: it {why})", file=sys.stderr)


def _instance(name: str | None) -> InstanceDir:
    try:
        return select_instance(name)
    except NoInstance as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)


def reopen_logs(name: str | None) -> None:
    """One instance with --instance; otherwise every running one (logrotate's
    postrotate does not know which instances write the files it rotated)."""
    instances = [_instance(name)] if name else live_instances()
    failed = False
    for instance in instances:
        try:
            pid = int(instance.properties()["watchdog_pid"])
            os.kill(pid, signal.SIGUSR1)  # the watchdog passes it on to the logging agent
        except (OSError, KeyError, ValueError) as exc:
            print(f"passenger-config reopen-logs: cannot signal the watchdog of "
                  f"{instance.path}: {exc}", file=sys.stderr)
            failed = True
            continue
        print(f"Asked instance {describe(instance)[0]} to reopen its log files.")
    if not instances:
        print("There are no Passenger instances running.")
    if failed:
        sys.exit(1)


def _admin_post(instance: InstanceDir, path: str, body: dict[str, object],
                ignore_not_found: bool) -> object:
    try:
        return request(instance.admin_socket, "POST", path, body)
    except AdminError as exc:
        if ignore_not_found and exc.status == 404:
            sys.exit(0)
        print(f"passenger-config: {exc}", file=sys.stderr)
        sys.exit(1)


def detach_process(args: dict[str, Any]) -> None:
    pid_text = str(args["<PID>"])
    if not pid_text.isdigit():
        print(f"passenger-config detach-process: PID {pid_text!r} is not a number",
              file=sys.stderr)
        sys.exit(2)
    instance = _instance(args["--instance"])
    _admin_post(instance, admin_paths.DETACH_PROCESS, {"pid": int(pid_text)},
                bool(args["--ignore-nonexistant-pid"]))
    print(f"Process {pid_text} detached.")


def restart_app(args: dict[str, Any]) -> None:
    prefix = str(args["<APP_PATH_PREFIX>"])
    prefix = os.path.abspath(prefix) if prefix == "." or not prefix.startswith("/") else prefix
    instance = _instance(args["--instance"])
    result = _admin_post(instance, admin_paths.RESTART_APP_GROUP,
                         {"app_root_prefix": prefix, "rolling": bool(args["--rolling-restart"])},
                         bool(args["--ignore-app-not-running"]))
    for name in (result or {}).get("restarted", []):  # type: ignore[attr-defined]
        print(f"Restarting {name}")


def api_call(args: dict[str, Any]) -> None:
    method = str(args["<METHOD>"]).upper()
    if method not in ("GET", "POST", "PUT", "DELETE"):
        print(f"passenger-config api-call: METHOD {args['<METHOD>']!r} is not one of GET, "
              f"POST, PUT, DELETE", file=sys.stderr)
        sys.exit(2)
    path = str(args["<PATH>"])
    if not path.startswith("/"):
        path = "/" + path
    body = None
    if args["-d"] is not None:
        try:
            body = json.loads(args["-d"])
        except ValueError as exc:
            print(f"passenger-config api-call: -d: not JSON: {exc}", file=sys.stderr)
            sys.exit(2)
    instance = _instance(args["--instance"])
    try:
        result = request(instance.admin_socket, method, path, body, timeout=30)
    except AdminError as exc:
        print(f"passenger-config api-call: {exc}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(result, indent=2))


@entry_point
def main(argv: list[str] | None = None) -> None:
    protect_output()
    args = parse(__doc__ or "", argv, "passenger-config", version=f"Passenger {VERSION}")
    if args["list-instances"]:
        list_instances(args["--json"], verbose=bool(args["-v"]))
    elif args["reopen-logs"]:
        reopen_logs(args["--instance"])
    elif args["detach-process"]:
        detach_process(args)
    elif args["restart-app"]:
        restart_app(args)
    elif args["api-call"]:
        api_call(args)


if __name__ == "__main__":
    main()
