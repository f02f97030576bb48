"""--metrics-address: /metrics (parsed with prometheus_client's own parser), /healthz and
/readyz, against real servers, real requests, real crashes and recyclings."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from support import (
    INSTRUMENTED_APP,
    PassengerServer,
    free_port,
    http_request,
    wait_for,
)

APP = str(INSTRUMENTED_APP)


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    status, _, body = http_request(port, path, timeout=5)
    return status, body.decode()


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels)."""
    status, text = scrape(port)
    assert status == 200
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def metrics_server(*args: str, app: Path = INSTRUMENTED_APP) -> tuple[PassengerServer, int]:
    port = free_port()
    return PassengerServer(app, "--metrics-address", f"127.0.0.1:{port}", *args), port


def test_requests_processes_and_memory_are_counted() -> None:
    server, port = metrics_server("--min-instances", "2")
    with _started(server):
        wait_for(lambda: len(server.app_pids()) == 2, 15, message="two processes")
        before = samples(port)  # the start's own readiness request is in it
        for path, times in (("/", 3), ("/status?code=404+Not+Found", 2), ("/error", 1),
                            ("/status?code=302+Found", 1)):
            for _ in range(times):
                server.get(path)
        assert server.get("/sleep?s=0.3")[0] == 200
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")  # no app's
            assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
        found = samples(port)
        def added(name: str, **labels: str) -> float:
            return value(found, name, **labels) - value(before, name, **labels)
        counts = {cls: added("passenger_requests_total", app=APP, status_class=cls)
                  for cls in ("1xx", "2xx", "3xx", "4xx", "5xx")}
        assert counts == {"1xx": 0, "2xx": 4, "3xx": 1, "4xx": 2, "5xx": 1}
        assert added("passenger_request_duration_seconds_count", app=APP) == 8
        assert added("passenger_request_duration_seconds_bucket", app=APP,
                     le="0.25") == 7  # all but the 0.3 s one
        assert added("passenger_request_duration_seconds_bucket", app=APP, le="+Inf") == 8
        assert value(found, "passenger_request_duration_seconds_sum", app=APP) >= 0.3
        assert value(found, "passenger_processes", app=APP, state="enabled") == 2
        assert value(found, "passenger_queue_length", app=APP) == 0
        assert value(found, "passenger_spawns_total", app=APP) == 2
        assert value(found, "passenger_spawn_failures_total", app=APP) == 0
        for pid in server.app_pids():
            assert value(found, "passenger_process_private_dirty_bytes", app=APP,
                         pid=str(pid)) > 0
        assert value(found, "passenger_log_lines_dropped_total",
                     writer="helper agent, access log") == 0
        assert value(found, "passenger_requests_total", app="", status_class="4xx") == 1


class _started:
    def __init__(self, server: PassengerServer) -> None:
        self.server = server

    def __enter__(self) -> PassengerServer:
        return self.server.start()

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


def test_replacements_are_counted_by_reason() -> None:
    server, port = metrics_server("--max-pool-size", "2", "--max-request-time", "1",
                                  "--memory-limit", "60")
    with _started(server):
        pid = wait_for(lambda: server.app_pids(), 15, message="a process")[0]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: (p := server.app_pids()) and pid not in p, 10, message="respawn")
        assert server.get("/sleep?s=3", timeout=10)[0] == 504
        assert server.get("/alloc?mb=100", timeout=10)[0] == 200

        def replaced(reason: str) -> float:
            return value(samples(port), "passenger_processes_replaced_total", app=APP,
                         reason=reason)
        wait_for(lambda: replaced("memory_limit") == 1, 10, message="memory-limit counted")
        assert replaced("crash") == 1
        assert replaced("max_request_time") == 1
        assert replaced("max_requests") == 0
    server, port = metrics_server("--max-requests", "2")
    with _started(server):
        for _ in range(2):
            assert server.get("/")[0] == 200
        wait_for(lambda: value(samples(port), "passenger_processes_replaced_total", app=APP,
                               reason="max_requests") == 1, 10, message="max-requests")


def test_spawn_failures_and_readiness(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "passenger_wsgi.py").write_text("raise RuntimeError('not today')\n")
    server, port = metrics_server(app=app)
    with _started(server):
        assert server.get("/")[0] == 500
        found = samples(port)
        assert value(found, "passenger_spawn_failures_total", app=str(app)) >= 1
        assert value(found, "passenger_spawns_total", app=str(app)) == 0
        status, text = scrape(port, "/readyz")
        assert status == 503 and f"no ready process yet for {app}" in text
        assert scrape(port, "/healthz") == (200, "ok\n")


def test_readyz_follows_the_pool_and_shutdown() -> None:
    server, port = metrics_server("--graceful-timeout", "10")
    with _started(server):
        wait_for(lambda: scrape(port, "/readyz")[0] == 200, 15, message="ready")
        assert scrape(port, "/readyz")[1] == "ready\n"
        busy = threading.Thread(target=lambda: server.get("/sleep?s=3", timeout=20),
                                daemon=True)
        busy.start()
        time.sleep(0.3)
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGTERM)  # graceful: the request finishes first
        _, text = wait_for(lambda: (r := scrape(port, "/readyz"))[0] == 503 and r, 5,
                                message="not ready while stopping")
        assert "shutting down" in text
        assert scrape(port, "/healthz")[0] == 200  # alive all the same
        busy.join(20)


def test_unknown_paths_methods_and_bad_addresses() -> None:
    server, port = metrics_server()
    with _started(server):
        assert scrape(port, "/nope")[0] == 404
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 405 ")
    for spec, message in (("127.0.0.1", "--metrics-address: '127.0.0.1' is not HOST:PORT"),
                          ("localhost:9090", "--metrics-address: 'localhost' is not an IP"),
                          ("127.0.0.1:70000", "is not HOST:PORT with a port 1..65535")):
        bad = PassengerServer(INSTRUMENTED_APP, "--metrics-address", spec)
        bad.start(wait_ready=False)
        try:
            assert bad.proc is not None and bad.proc.wait(20) == 1
            assert message in bad.console()
        finally:
            bad.stop()


def test_healthz_reports_a_stuck_event_loop_within_a_second() -> None:
    """A loop that never runs the check stands for a stuck one (the helper agent itself
    cannot be stuck on purpose from outside)."""
    from passenger.helper_agent.metrics_server import MetricsServer

    stuck = asyncio.new_event_loop()  # never run
    listener = socket.create_server(("127.0.0.1", 0))
    server = MetricsServer(listener, pool=None, front=None, loop=stuck)  # type: ignore[arg-type]
    server.start()
    try:
        started = time.monotonic()
        status, text = scrape(listener.getsockname()[1], "/healthz")
        took = time.monotonic() - started
        assert status == 503 and "did not answer within 1 s" in text
        assert 0.9 < took < 3
    finally:
        server.stop()
        listener.close()
        stuck.close()
