"""Finding the instance a command talks to, as Passenger's tools do: clean stale instance
directories (saying so), pick the only live one, or ask the user to choose."""

from __future__ import annotations

import sys
from typing import Any

import tabulate

from passenger.common.instance_dir import InstanceDir, list_instances, registry_dir


class NoInstance(Exception):
    """The message is one line for the user."""


def _report_stale(inst: InstanceDir) -> None:
    print(f"*** Cleaning stale instance directory {inst.path}", file=sys.stderr)


def live_instances(report_skipped: Any = None) -> list[InstanceDir]:
    """Instances we may trust (see `instance_dir`); stale ones are cleaned, saying so."""
    return list_instances(registry_dir(), report_stale=_report_stale,
                          report_skipped=report_skipped)


def describe(inst: InstanceDir) -> tuple[str, str, str]:
    try:
        props = inst.properties()
    except (OSError, ValueError):
        return (inst.path.name, "?", "(unreadable properties.json)")
    return (str(props.get("name")), str(props.get("watchdog_pid")),
            f"{props.get('server_software')} serving {', '.join(props.get('app_roots', []))} "
            f"on {props.get('listen')}")


def instances_table(instances: list[InstanceDir]) -> str:
    """Passenger's layout: Name in 27 columns, PID in 9, a rule under the header."""
    tabulate.PRESERVE_WHITESPACE = True  # the padded headers set Passenger's widths
    try:
        table = tabulate.tabulate([describe(i) for i in instances],
                                  headers=["Name".ljust(23), "PID".ljust(5), "Description"],
                                  tablefmt="plain", disable_numparse=True)
    finally:
        tabulate.PRESERVE_WHITESPACE = False
    header, *rows = table.splitlines()
    width = max(74, *(len(line.rstrip()) for line in table.splitlines()))
    return "\n".join([header.rstrip(), "-" * width, *(r.rstrip() for r in rows)])


def select_instance(name_prefix: str | None) -> InstanceDir:
    instances = live_instances()
    if name_prefix:
        instances = [i for i in instances if describe(i)[0].startswith(name_prefix)]
    if not instances:
        where = registry_dir()
        if name_prefix:
            raise NoInstance(f"ERROR: there is no Passenger instance named {name_prefix!r} "
                             f"in {where}")
        raise NoInstance(f"ERROR: Passenger doesn't seem to be running (no instance in "
                         f"{where}; if it was started with --instance-registry-dir, set "
                         f"PASSENGER_INSTANCE_REGISTRY_DIR to that directory)")
    if len(instances) > 1:
        raise NoInstance("It appears that multiple Passenger instances are running. Please\n"
                         "select a specific one by running:\n\n"
                         f"  {sys.argv[0].rsplit('/', 1)[-1]} <NAME>\n\n"
                         f"The following Passenger instances are running:\n\n"
                         f"{instances_table(instances)}")
    return instances[0]
