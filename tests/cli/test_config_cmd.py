"""passenger-config's calls of the admin API: its help names every endpoint, and when the
helper agent says no, a 404 is success with --ignore-nonexistant-pid /
--ignore-app-not-running while anything else is its one line on stderr and exit 1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from passenger.cli import config_cmd
from passenger.common import admin_paths
from passenger.common.admin_client import AdminError


class _Instance:
    admin_socket = Path("/nonexistent/admin.sock")


def refuse(error: AdminError) -> Any:
    def request(*args: object, **kwargs: object) -> Any:
        raise error
    return request


NOT_FOUND = AdminError("the helper agent answered 404: no running app process with PID 7",
                       404)
UNREACHABLE = AdminError("cannot talk to the helper agent at /x/admin.sock: refused")


@pytest.mark.parametrize(("error", "ignore", "code"), [
    (NOT_FOUND, True, 0),
    (NOT_FOUND, False, 1),
    (UNREACHABLE, True, 1),  # only the helper agent's 404 may be ignored
])
def test_only_a_404_is_ignored_when_asked(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str],
                                          error: AdminError, ignore: bool,
                                          code: int) -> None:
    monkeypatch.setattr(config_cmd, "request", refuse(error))
    with pytest.raises(SystemExit) as exited:
        config_cmd._admin_post(_Instance(), "/any", {}, ignore)  # type: ignore[arg-type]
    assert exited.value.code == code
    assert capsys.readouterr().err == ("" if code == 0 else f"passenger-config: {error}\n")


def test_the_help_of_api_call_names_every_endpoint() -> None:
    paths = [value for name, value in vars(admin_paths).items() if name.isupper()]
    assert len(paths) == 7
    usage = " ".join((config_cmd.__doc__ or "").split())
    for path in paths:
        assert path in usage
