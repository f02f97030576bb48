"""How an app's processes are launched: as which user (Passenger's rules, `app_user`),
with which environment, and whether they could start at all (`preflight`, checked
before the server reports ready)."""

from __future__ import annotations

import logging
import os
import subprocess
from typing import Any

from passenger.common.config import ServerConfig
from passenger.helper_agent.app_user import app_user
from passenger.helper_agent.spawn_error import SpawnError

log = logging.getLogger(__name__)


class AppLaunch:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.user = app_user(config)
        if self.user is not None:
            log.info("Processes of %s run as user %s", config.app_root, self.user.name)

    def app_variables(self) -> dict[str, str]:
        """What we add to the app's environment (the rest is the server's own)."""
        env = {"PASSENGER_APP_ENV": self.config.environment,
               "WSGI_ENV": self.config.environment, "PYTHONUNBUFFERED": "1",
               "IN_PASSENGER": "1"}
        if self.user is not None:
            env.update(self.user.environment())
        return env

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.app_variables()}

    def popen_user(self) -> dict[str, Any]:
        """Popen's arguments that start the process as the app's user."""
        if self.user is None:
            return {}
        return {"user": self.user.uid, "group": self.user.gid,
                "extra_groups": list(self.user.groups)}

    def start_error(self, exc: OSError) -> SpawnError:
        hint = ""
        if self.user is not None and isinstance(exc, PermissionError):
            hint = (f" (the app runs as {self.user.name}, who must be able to run it and "
                    f"read the app; see --user)")
        return SpawnError(f"cannot start {self.config.python}: {exc}{hint}", [])

    def preflight(self) -> str:
        """Why no process of this app could ever start ("" if one may): checked before
        the server reports ready, so `passenger start` refuses with that line instead
        of a healthy banner over a 500 on every request."""
        if self.config.app_start_command:
            return ""
        startup = os.path.join(self.config.app_root, self.config.startup_file)
        if not os.path.isfile(startup):
            return (f"{self.config.app_root} has no {self.config.startup_file} (a WSGI app's "
                    f"startup file; see --startup-file), and no --app-start-command was "
                    f"given: there is nothing to serve")
        if self.user is None:
            return ""
        # As the app's user: can it run the interpreter, and read the startup file?
        try:
            check = subprocess.run(
                [self.config.python, "-c", "import sys; open(sys.argv[1], 'rb').close()",
                 startup], capture_output=True, text=True, timeout=30, cwd="/",
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, **self.popen_user())
        except PermissionError:
            return (f"user {self.user.name} (who runs the app) cannot run "
                    f"{self.config.python}; see --user and --python")
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"cannot run {self.config.python} as user {self.user.name}: {exc}"
        if check.returncode != 0:
            last = (check.stderr.strip().splitlines() or ["no output"])[-1]
            return (f"user {self.user.name} (who runs the app) cannot read {startup} with "
                    f"{self.config.python}: {last}; see --user")
        return ""
