"""Which user an app's processes run as, by Passenger's rules.

Not root: as ourselves. Root: as `--user` if given (`--user root` is the only way to run
an app as root); otherwise as the owner of the startup file (`passenger_wsgi.py`, or the
app directory for a generic app), and if that is root, as `nobody`. The group is the
user's primary group, with its supplementary groups.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from passenger.common.config import ServerConfig

FALLBACK_USER = "nobody"


@dataclass(frozen=True)
class AppUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str

    def environment(self) -> dict[str, str]:
        return {"USER": self.name, "LOGNAME": self.name, "HOME": self.home,
                "SHELL": self.shell}


def app_user(config: ServerConfig) -> AppUser | None:
    """None: no switching (we are not root)."""
    if os.geteuid() != 0:
        return None
    if config.user:
        entry = pwd.getpwnam(config.user)
    else:
        owned = (config.app_root if config.app_start_command
                 else os.path.join(config.app_root, config.startup_file))
        try:
            # The link's own owner if it is one: a link from the app dir to another
            # user's file must not make the app (the owner's code) run as that user.
            owner = os.lstat(owned).st_uid
            entry = pwd.getpwuid(owner)
        except (OSError, KeyError):
            entry = pwd.getpwnam(FALLBACK_USER)
        if entry.pw_uid == 0:
            entry = pwd.getpwnam(FALLBACK_USER)
    groups = tuple(sorted({g.gr_gid for g in grp.getgrall() if entry.pw_name in g.gr_mem}
                          | {entry.pw_gid}))
    return AppUser(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir,
                   entry.pw_shell)
