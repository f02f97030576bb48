"""Spawning and restarting without downtime: smart vs direct memory, rolling restarts
(also to broken code), restart.txt, generic apps, spawn error pages, threads."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from support import (
    INSTRUMENTED_APP,
    PassengerServer,
    RequestLoop,
    concurrent_requests,
    is_gone,
    running_server,
    wait_for,
)

HEAVY_APP = Path(__file__).parents[2] / "examples" / "heavy"


@pytest.fixture
def app_copy() -> Iterator[Path]:
    """A private copy of the instrumented app that a test may break and mend."""
    root = Path(tempfile.mkdtemp(prefix="papp.", dir="/tmp"))
    shutil.copy(INSTRUMENTED_APP / "passenger_wsgi.py", root / "passenger_wsgi.py")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def private_dirty_kb(server: PassengerServer) -> tuple[int, int, int]:
    """-> (summed private dirty of the app processes, how many, PSS of the app processes
    and the preloader together), as passenger-memory-stats reports them. PSS is the fair
    total: pages shared copy-on-write are split between the processes sharing them."""
    result = server.run_tool("passenger-memory-stats", "--json", "--no-apache", "--no-nginx")
    assert result.returncode == 0, result.stderr
    pids = set(server.app_pids())
    rows = json.loads(result.stdout)["groups"]["passenger"]["processes"]
    apps = [p for p in rows if p["pid"] in pids]
    server.remember_descendants()
    pss = sum(p["pss_kb"] for p in rows if p["pid"] in pids or (
        p["pid"] in server.seen_pids and p["name"].startswith("Passenger AppPreloader:")))
    return sum(p["private_dirty_kb"] for p in apps), len(apps), pss


def test_1_smart_spawning_uses_markedly_less_memory_than_direct() -> None:
    root = Path(tempfile.mkdtemp(prefix="pheavy.", dir="/tmp"))
    try:
        shutil.copy(HEAVY_APP / "passenger_wsgi.py", root / "passenger_wsgi.py")
        totals: dict[str, int] = {}
        pss: dict[str, int] = {}
        for method in ("direct", "smart"):
            with running_server(root, "--spawn-method", method, "--min-instances", "4",
                                "--max-pool-size", "4", start_timeout=60) as server:
                wait_for(lambda s=server: len(s.app_pids()) == 4, 60, interval=0.2,
                         message="four app processes")
                for _ in range(20):
                    assert server.get("/")[0] == 200
                time.sleep(0.5)
                totals[method], count, pss[method] = private_dirty_kb(server)
                assert count == 4
        ratio = totals["smart"] / totals["direct"]
        pss_ratio = pss["smart"] / pss["direct"]
        print(f"4 app processes, private dirty RSS: direct {totals['direct'] / 1024:.1f} MB, "
              f"smart {totals['smart'] / 1024:.1f} MB (ratio {ratio:.2f}); PSS with the "
              f"preloader: direct {pss['direct'] / 1024:.1f} MB, smart "
              f"{pss['smart'] / 1024:.1f} MB (ratio {pss_ratio:.2f})")
        assert ratio < 0.5 and pss_ratio < 0.6
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_2_rolling_restart_under_load_fails_nothing_and_replaces_every_pid(
        app_copy: Path) -> None:
    with running_server(app_copy, "--min-instances", "3", "--max-pool-size", "3") as server:
        old = set(wait_for(lambda: len(p := server.app_pids()) == 3 and p, 15,
                           message="three processes"))
        with RequestLoop(server.port, limit=5000, pause=0.002) as loop:
            time.sleep(0.3)
            result = server.run_tool("passenger-config", "restart-app", str(app_copy),
                                     "--rolling-restart")
            assert result.returncode == 0, result.stderr
            wait_for(lambda: len(p := set(server.app_pids())) == 3 and not p & old, 20,
                     message="every process replaced")
            time.sleep(0.3)
        failures = [r for r in loop.results if r[1] != 200]
        print(f"rolling restart: {len(loop.results)} requests, {len(failures)} failed")
        assert not failures and len(loop.results) > 100
        server.wait_for_log("Rolling restart of")


def test_3_rolling_restart_to_broken_code_keeps_the_old_processes_serving(
        app_copy: Path) -> None:
    with running_server(app_copy, "--min-instances", "2", "--max-pool-size", "2") as server:
        old = set(wait_for(lambda: len(p := server.app_pids()) == 2 and p, 15,
                           message="two processes"))
        (app_copy / "passenger_wsgi.py").write_text(
            "raise ImportError('deploy gone wrong: missing dependency')\n")
        with RequestLoop(server.port, limit=5000, pause=0.002) as loop:
            time.sleep(0.2)
            result = server.run_tool("passenger-config", "restart-app", str(app_copy),
                                     "--rolling-restart")
            assert result.returncode == 0, result.stderr
            wait_for(lambda: "deploy gone wrong" in server.status()["groups"][0]
                     ["last_spawn_error"], 15, message="the error in passenger-status")
            time.sleep(0.5)
        assert all(status == 200 for _, status, _ in loop.results)
        assert set(server.app_pids()) == old
        server.wait_for_log("deploy gone wrong: missing dependency")
        server.wait_for_log("Keeping the 1 old process(es)")
        text = server.run_tool("passenger-status").stdout
        assert "Last spawn error: ImportError: deploy gone wrong" in text


def test_4_restart_txt_serves_the_next_request_from_a_new_process_with_new_code(
        app_copy: Path) -> None:
    with running_server(app_copy, "--stat-throttle-rate", "0") as server:
        status, headers, _ = server.get("/")
        old_pid = int(headers["x-pid"])
        source = app_copy / "passenger_wsgi.py"
        source.write_text(source.read_text().replace('f"pid={os.getpid()}', 'f"new pid='))
        (app_copy / "tmp").mkdir()
        (app_copy / "tmp" / "restart.txt").touch()
        status, headers, body = server.get("/")
        assert status == 200 and int(headers["x-pid"]) != old_pid
        assert body.startswith(b"new pid=")
        wait_for(lambda: is_gone(old_pid), 5, message="the old process gone")


def served_by(server: PassengerServer) -> int:
    status, headers, _ = server.get("/")
    assert status == 200
    return int(headers["x-pid"])


def test_always_restart_txt_restarts_before_every_request_while_it_exists(
        app_copy: Path) -> None:
    with running_server(app_copy, "--stat-throttle-rate", "0") as server:
        first = served_by(server)
        (app_copy / "tmp").mkdir()
        (app_copy / "tmp" / "always_restart.txt").touch()
        pids = [served_by(server) for _ in range(3)]
        assert len({first, *pids}) == 4, (first, pids)  # a new process each time
        wait_for(lambda: all(is_gone(pid) for pid in (first, *pids[:-1])), 10,
                 message="the restarted processes gone")
        (app_copy / "tmp" / "always_restart.txt").unlink()
        assert {served_by(server) for _ in range(3)} == {pids[-1]}


def test_restart_dir_moves_where_restart_txt_is_looked_for(app_copy: Path) -> None:
    (app_copy / "tmp").mkdir()
    (app_copy / "deploy-flags").mkdir()
    with running_server(app_copy, "--stat-throttle-rate", "0",
                        "--restart-dir", "deploy-flags") as server:
        first = served_by(server)
        (app_copy / "tmp" / "restart.txt").touch()  # not where we look any more
        (app_copy / "tmp" / "always_restart.txt").touch()
        assert served_by(server) == first
        (app_copy / "deploy-flags" / "restart.txt").touch()
        second = served_by(server)
        assert second != first
        wait_for(lambda: is_gone(first), 10, message="the old process gone")
        assert served_by(server) == second  # restart.txt: once per change


def test_5_generic_app_is_served_and_respawned(tmp_path: Path) -> None:
    site = Path(tempfile.mkdtemp(prefix="psite.", dir="/tmp"))
    try:
        (site / "index.html").write_text("served by a generic app\n")
        command = "exec python3 -m http.server $PORT --bind 127.0.0.1"
        with running_server(site, "--app-start-command", command) as server:
            status, _, body = server.get("/index.html")
            assert status == 200 and body == b"served by a generic app\n"
            assert server.get("/missing")[0] == 404
            (pid,) = server.app_pids()
            os.kill(pid, signal.SIGKILL)
            new = wait_for(lambda: (p := server.app_pids()) and pid not in p and p, 5,
                           message="a respawned generic app")
            assert new and server.get("/index.html")[0] == 200
    finally:
        shutil.rmtree(site, ignore_errors=True)


@pytest.mark.parametrize("environment", ["development", "production"])
def test_6_syntax_error_gives_the_right_error_page_and_the_server_stays_up(
        app_copy: Path, environment: str) -> None:
    (app_copy / "passenger_wsgi.py").write_text("def application(:\n    pass\n")
    server = PassengerServer(app_copy, "--environment", environment)
    try:
        server.start(wait_ready=False)
        wait_for(lambda: server.instance_dir() is not None, 15, message="the server up")
        status, _, body = wait_for(lambda: _get_or_none(server), 15, message="an answer")
        assert status == 500
        if environment == "development":
            assert b"Web application could not be started" in body
            assert b"SyntaxError" in body and b"passenger_wsgi.py" in body
            assert b"PASSENGER_APP_ENV" in body  # the environment is shown
        else:
            assert b"something went wrong" in body and b"SyntaxError" not in body
        server.wait_for_log("SyntaxError")
        assert server.run_tool("passenger-status").returncode == 0
    finally:
        server.stop()


def _get_or_none(server: PassengerServer) -> tuple[int, dict[str, str], bytes] | None:
    try:
        return server.get("/", timeout=30)
    except OSError:
        return None


def test_7_threaded_process_serves_four_requests_at_once() -> None:
    with running_server(INSTRUMENTED_APP, "--concurrency-model", "thread", "--thread-count",
                        "4", "--min-instances", "1", "--max-pool-size", "1") as server:
        started = time.monotonic()
        results = concurrent_requests(server.port, ["/sleep?s=0.2"] * 4)
        elapsed = time.monotonic() - started
        print(f"4 concurrent 0.2 s requests on one 4-thread process: {elapsed:.2f} s")
        assert [r[0] for r in results] == [200] * 4
        assert len({body for _, body, _ in results}) == 1  # one process served them all
        assert elapsed < 0.6


def test_direct_spawning_runs_no_preloader() -> None:
    with running_server(INSTRUMENTED_APP, "--spawn-method", "direct",
                        "--min-instances", "2") as server:
        wait_for(lambda: len(server.app_pids()) == 2, 10, message="two processes")
        server.remember_descendants()
        titles = [" ".join(psutil.Process(pid).cmdline()) for pid in server.seen_pids
                  if not is_gone(pid)]
        assert sum(t.startswith("Passenger WsgiApp:") for t in titles) == 2
        assert not any(t.startswith("Passenger AppPreloader:") for t in titles)


def test_start_timeout_kills_and_reports_a_slow_starting_process(app_copy: Path) -> None:
    source = app_copy / "passenger_wsgi.py"
    source.write_text("import time\ntime.sleep(30)\n" + source.read_text())
    server = PassengerServer(app_copy, "--start-timeout", "1", "--spawn-method", "direct")
    try:
        server.start(wait_ready=False)
        wait_for(lambda: "did not start within 1 seconds (--start-timeout)" in server.log(),
                 15, message="the timeout in the log")
        status = server.status()["groups"][0]
        assert "--start-timeout" in status["last_spawn_error"] and not status["processes"]
        killed = re.search(r"process (\d+) killed", server.log())
        assert killed and is_gone(int(killed.group(1)))
    finally:
        server.stop()


def test_preloader_idles_out_and_a_dead_preloader_is_replaced_on_the_next_spawn() -> None:
    with running_server(INSTRUMENTED_APP, "--max-preloader-idle-time", "1") as server:
        (pid,) = wait_for(lambda: server.app_pids(), 10, message="one process")
        first = preloader_pid(server)
        assert first is not None
        wait_for(lambda: is_gone(first), 5, message="the idle preloader stopped")
        wait_for(lambda: "unused for 1 s (--max-preloader-idle-time)" in server.log(), 5,
                 message="the reason in the log")
        os.kill(pid, signal.SIGKILL)  # the replacement needs a preloader again
        wait_for(lambda: (p := server.app_pids()) and pid not in p, 10,
                 message="a replacement process")
        second = preloader_pid(server)
        assert second is not None and second != first
        os.kill(second, signal.SIGKILL)
        (pid,) = server.app_pids()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: (p := server.app_pids()) and pid not in p, 10,
                 message="a replacement after the preloader died")
        assert server.get("/")[0] == 200


def test_app_that_starts_threads_at_import_is_spawned_directly(app_copy: Path) -> None:
    source = app_copy / "passenger_wsgi.py"
    source.write_text("import threading, time\n"
                      "threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n"
                      + source.read_text())
    with running_server(app_copy, "--min-instances", "2") as server:
        wait_for(lambda: len(server.app_pids()) == 2, 15, message="two processes")
        server.wait_for_log("cannot be preloaded safely (the app started 1 thread(s)")
        assert preloader_pid(server) is None
        assert server.get("/")[0] == 200


def preloader_pid(server: PassengerServer) -> int | None:
    helper = server.find_agent_pid("PassengerHelperAgent")
    if helper is None:
        return None
    for child in psutil.Process(helper).children():
        try:
            if " ".join(child.cmdline()).startswith("Passenger AppPreloader:"):
                return int(child.pid)
        except psutil.Error:
            continue
    return None
