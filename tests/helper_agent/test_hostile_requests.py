"""Every case of the hostile-request table against a real server: the responses the
client gets, in order, and whether the connection is closed afterwards (checked by EOF)
or kept open (checked by a request that must still be answered on it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hostile_requests import CASES, Case
from raw_http import exchange
from support import INSTRUMENTED_APP, PassengerServer, running_server


@pytest.fixture(scope="module")
def server() -> Iterator[PassengerServer]:
    with running_server(INSTRUMENTED_APP, "--min-instances", "1") as srv:
        yield srv


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request(server: PassengerServer, case: Case) -> None:
    statuses, closed = exchange(server.port, case)
    assert statuses == list(case.statuses)
    assert closed == case.closes


def test_the_server_serves_on_after_the_whole_table(server: PassengerServer) -> None:
    assert server.get("/")[0] == 200
    assert "Traceback" not in server.log()
