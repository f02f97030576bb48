"""Process titles, so that `ps` and `passenger-memory-stats` show what each process is.

The `setproctitle` package imports `logging` only to say when its C extension is missing:
1.2 MB of private memory in every agent. We load the extension alone, and fall back to
the package where that does not work.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

WATCHDOG = "PassengerWatchdog"
HELPER_AGENT = "PassengerHelperAgent"
LOGGING_AGENT = "PassengerLoggingAgent"
WSGI_APP_PREFIX = "Passenger WsgiApp: "
PRELOADER_PREFIX = "Passenger AppPreloader: "


def set_title(title: str) -> None:
    _setter()(title)


def _setter() -> Callable[[str], None]:
    try:
        return _extension_setter()
    except (ImportError, AttributeError):
        import setproctitle

        return setproctitle.setproctitle


def _extension_setter() -> Callable[[str], None]:
    """`setproctitle._setproctitle.setproctitle`, without running the package."""
    import importlib.machinery

    finder = importlib.machinery.PathFinder
    package = finder.find_spec("setproctitle")
    if package is None or not package.submodule_search_locations:
        raise ImportError("setproctitle is not installed")
    spec = finder.find_spec("setproctitle._setproctitle", package.submodule_search_locations)
    if spec is None or spec.loader is None:
        raise ImportError("setproctitle has no C extension")
    module = spec.loader.create_module(spec)
    if module is None:
        raise ImportError("setproctitle's C extension did not load")
    spec.loader.exec_module(module)
    setter: Callable[[str], None] = module.setproctitle
    return setter
