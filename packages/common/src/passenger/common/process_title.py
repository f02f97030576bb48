"""Process titles, so that `ps` and `passenger-memory-stats` show what each process is."""

from __future__ import annotations

import setproctitle


def set_title(title: str) -> None:
    setproctitle.setproctitle(title)


WATCHDOG = "PassengerWatchdog"
HELPER_AGENT = "PassengerHelperAgent"
LOGGING_AGENT = "PassengerLoggingAgent"
WSGI_APP_PREFIX = "Passenger WsgiApp: "
PRELOADER_PREFIX = "Passenger AppPreloader: "
