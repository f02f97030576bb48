"""Numbered pool scenarios with real processes and the instrumented app: what a user sees
(status codes, PIDs, `passenger-status --show=json` facts) for each pool rule."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter

from support import (
    HELLO_APP,
    INSTRUMENTED_APP,
    PassengerServer,
    RequestLoop,
    concurrent_requests,
    is_gone,
    running_server,
    wait_for,
)


def pids_of(server: PassengerServer) -> list[int]:
    return server.app_pids()


def group(server: PassengerServer, index: int = 0) -> dict[str, object]:
    result: dict[str, object] = server.status()["groups"][index]
    return result


def test_1_queue_limit_rejects_the_overflow_at_once() -> None:
    with running_server(INSTRUMENTED_APP, "--min-instances", "2", "--max-pool-size", "2",
                        "--max-request-queue-size", "10") as server:
        wait_for(lambda: len(pids_of(server)) == 2, 10, message="two processes")
        results = concurrent_requests(server.port, ["/sleep?s=0.2"] * 30)
        statuses = Counter(status for status, _, _ in results)
        assert statuses == {200: 12, 503: 18}, statuses
        for status, body, seconds in results:
            if status == 503:
                assert b"under heavy load (queue full)" in body
                assert seconds < 0.15, f"a 503 took {seconds:.3f} s"
        assert group(server)["requests_rejected"] == 18
        server.wait_for_log("--max-request-queue-size 10")


def test_2_scales_up_under_load_and_back_down_when_idle() -> None:
    with running_server(INSTRUMENTED_APP, "--min-instances", "1", "--max-pool-size", "3",
                        "--pool-idle-time", "2") as server:
        wait_for(lambda: len(pids_of(server)) == 1, 10, message="one process")
        seen_max = 0

        def watch() -> None:
            nonlocal seen_max
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                seen_max = max(seen_max, len(pids_of(server)))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        results = concurrent_requests(server.port, ["/sleep?s=1"] * 6)
        watcher.join(10)
        assert all(status == 200 for status, _, _ in results)
        served_by = {body for _, body, _ in results}
        assert seen_max == 3 and len(served_by) == 3  # never beyond --max-pool-size
        wait_for(lambda: len(pids_of(server)) == 1, 8, interval=0.2,
                 message="back down to --min-instances")
        server.wait_for_log("idle for more than 2 s (--pool-idle-time)")


def busy_sessions(server: PassengerServer) -> int:
    return sum(p["sessions"] for g in server.status()["groups"] for p in g["processes"])


def in_background(server: PassengerServer, path: str, timeout: float = 30
                  ) -> tuple[threading.Thread, list[tuple[int, bytes, float, float]]]:
    """GET `path` on a thread; the list gets (status, body, seconds, the monotonic time
    the answer came) once it ends."""
    result: list[tuple[int, bytes, float, float]] = []

    def run() -> None:
        started = time.monotonic()
        status, _, body = server.get(path, timeout=timeout)
        ended = time.monotonic()
        result.append((status, body, ended - started, ended))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_3_hung_request_gets_504_its_process_is_replaced_and_the_queue_moves() -> None:
    with running_server(INSTRUMENTED_APP, "--min-instances", "1", "--max-pool-size", "1",
                        "--max-request-time", "1") as server:
        (hung_pid,) = wait_for(lambda: pids_of(server), 10, message="one process")
        hung, hung_result = in_background(server, "/sleep?s=30")
        wait_for(lambda: busy_sessions(server) == 1, 5, message="the hung request in the app")
        queued, queued_result = in_background(server, "/")
        wait_for(lambda: group(server)["requests_in_queue"] == 1, 5,
                 message="the second request queued")
        hung.join(10)
        queued.join(10)
        # A 200 here would mean --max-request-time let the request run its 30 s.
        ((status, _, seconds, _),) = hung_result
        assert status == 504 and 0.9 < seconds < 3, (status, seconds)
        assert queued_result[0][0] == 200
        wait_for(lambda: is_gone(hung_pid), 3, message="the hung process gone")
        new_pid = wait_for(lambda: pids_of(server), 5, message="a replacement")[0]
        assert new_pid != hung_pid
        assert server.get("/")[0] == 200
        assert group(server)["requests_timed_out"] == 1


def test_4_process_over_memory_limit_is_replaced_and_no_request_fails() -> None:
    with running_server(INSTRUMENTED_APP, "--min-instances", "1", "--max-pool-size", "2",
                        "--memory-limit", "60") as server:
        (fat_pid,) = wait_for(lambda: pids_of(server), 10, message="one process")
        with RequestLoop(server.port, limit=3000, pause=0.01) as loop:
            status, headers, _ = server.get("/alloc?mb=90")
            assert status == 200 and int(headers["x-pid"]) == fat_pid
            wait_for(lambda: is_gone(fat_pid), 6, message="the fat process replaced")
            time.sleep(0.3)
        assert pids_of(server) and fat_pid not in pids_of(server)
        assert all(status == 200 for _, status, _ in loop.results), loop.results[-5:]
        wait_for(lambda: re.search(rf"App process {fat_pid} .*uses \d+ MB of private dirty "
                                   rf"memory, over --memory-limit 60 MB; replacing it",
                                   server.log()), 5, message="the reason in the log")


def test_5_full_pool_gives_a_second_app_the_oldest_idle_process_of_the_first() -> None:
    with running_server(INSTRUMENTED_APP, "--max-pool-size", "1",
                        "--app", f"/a={INSTRUMENTED_APP}", "--app", f"/b={HELLO_APP}") as server:
        wait_for(lambda: len(pids_of(server)) == 1, 10, message="app a's process")
        status, headers, body = server.get("/a/")
        assert status == 200
        a_pid = int(headers["x-pid"])
        status, _, body = server.get("/b/")
        assert status == 200 and body.startswith(b"Hello from process")
        b_pid = int(body.split()[-1])
        assert b_pid != a_pid
        wait_for(lambda: is_gone(a_pid), 5, message="app a's process stopped for room")
        pool = server.status()
        by_name = {g["base_uri"]: g for g in pool["groups"]}
        assert [p["pid"] for p in by_name["/b"]["processes"]] == [b_pid]
        assert by_name["/a"]["processes"] == [] and pool["process_count"] == 1
        server.wait_for_log("the pool is full and")
        status, _, _ = server.get("/elsewhere")
        assert status == 404


def test_6_max_requests_with_jitter_recycles_at_distinct_counts_without_failures() -> None:
    with running_server(INSTRUMENTED_APP, "--min-instances", "4", "--max-pool-size", "4",
                        "--max-requests", "50", "--max-requests-jitter", "20") as server:
        wait_for(lambda: len(pids_of(server)) == 4, 15, message="four processes")
        loops = [RequestLoop(server.port, limit=110, pause=0.0) for _ in range(4)]
        for loop in loops:
            loop.__enter__()
        for loop in loops:
            loop.thread.join(60)
        results = [r for loop in loops for r in loop.results]
        assert len(results) == 440
        assert all(status == 200 for _, status, _ in results)
        def recycled() -> list[int]:
            return [int(n) for n in re.findall(
                r"has served (\d+) requests \(--max-requests 50", server.log())]

        counts = wait_for(lambda: len(c := recycled()) >= 4 and c, 5,
                          message="four recycles in the log")
        assert all(50 <= n <= 70 for n in counts)
        assert len(set(counts)) == len(counts), f"two processes recycled at one count: {counts}"


def test_detach_process_and_restart_app() -> None:
    with running_server(INSTRUMENTED_APP, "--min-instances", "2") as server:
        first, _ = wait_for(lambda: len(p := pids_of(server)) == 2 and p, 10,
                            message="two processes")
        result = server.run_tool("passenger-config", "detach-process", str(first))
        assert result.returncode == 0, result.stderr
        wait_for(lambda: is_gone(first), 5, message="the detached process gone")
        wait_for(lambda: len(pids_of(server)) == 2 and first not in pids_of(server), 5,
                 message="back to two processes")
        missing = server.run_tool("passenger-config", "detach-process", "999999")
        assert missing.returncode == 1 and "no running app process with PID" in missing.stderr
        before = set(pids_of(server))
        result = server.run_tool("passenger-config", "restart-app", str(INSTRUMENTED_APP))
        assert result.returncode == 0 and f"Restarting {INSTRUMENTED_APP}" in result.stdout
        wait_for(lambda: len(p := set(pids_of(server))) == 2 and not p & before, 10,
                 message="two fresh processes")
        unknown = server.run_tool("passenger-config", "restart-app", "/nonexistent")
        assert unknown.returncode == 1 and "no app whose root begins with" in unknown.stderr


def test_queue_time_limit_answers_504_to_requests_that_waited_too_long() -> None:
    with running_server(INSTRUMENTED_APP, "--min-instances", "1", "--max-pool-size", "1",
                        "--max-request-queue-time", "1") as server:
        wait_for(lambda: len(pids_of(server)) == 1, 10, message="one process")
        slow = threading.Thread(target=server.get, args=("/sleep?s=2.5",))
        slow.start()
        time.sleep(0.3)  # the slow request holds the only process; the next one queues
        started = time.monotonic()
        status, _, body = server.get("/")
        waited = time.monotonic() - started
        slow.join(10)
        assert status == 504 and b"waited more than 1 s in the queue" in body
        assert 0.9 < waited < 2.0
        assert group(server)["requests_timed_out"] == 1


def test_max_instances_per_app_caps_the_app_below_the_pool_size() -> None:
    with running_server(INSTRUMENTED_APP, "--min-instances", "1", "--max-pool-size", "4",
                        "--max-instances-per-app", "2") as server:
        wait_for(lambda: len(pids_of(server)) == 1, 10, message="one process")
        seen_max = 0
        stop = threading.Event()

        def watch() -> None:
            nonlocal seen_max
            while not stop.is_set():
                seen_max = max(seen_max, len(server.status()["groups"][0]["processes"]))
                stop.wait(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            results = concurrent_requests(server.port, ["/sleep?s=1"] * 6)
        finally:
            stop.set()
            watcher.join(10)
        assert [status for status, _, _ in results] == [200] * 6
        assert len({body for _, body, _ in results}) == 2  # not 4: the pool had room
        assert seen_max == 2
        assert group(server)["max_instances_per_app"] == 2


def test_an_app_with_no_process_waits_in_the_top_level_queue_until_one_is_idle() -> None:
    with running_server(INSTRUMENTED_APP, "--max-pool-size", "1",
                        "--app", f"/a={INSTRUMENTED_APP}", "--app", f"/b={HELLO_APP}") as server:
        (a_pid,) = wait_for(lambda: pids_of(server), 10, message="app a's process")
        a_thread, a_result = in_background(server, "/a/sleep?s=2")
        wait_for(lambda: busy_sessions(server) == 1, 5, message="app a's process busy")
        b_thread, b_result = in_background(server, "/b/")
        wait_for(lambda: server.status()["requests_in_top_level_queue"] == 1, 5,
                 message="app b's request in the top-level queue")
        assert b_thread.is_alive()  # nothing idle to take: b waits, a is not cut short
        a_thread.join(10)
        b_thread.join(10)
        ((a_status, _, _, a_ended),) = a_result
        ((b_status, b_body, _, b_ended),) = b_result
        assert a_status == 200
        assert b_status == 200 and b_body.startswith(b"Hello from process")
        assert b_ended > a_ended  # it waited for a's process to become idle
        wait_for(lambda: is_gone(a_pid), 5, message="app a's process stopped for room")
        pool = server.status()
        assert pool["requests_in_top_level_queue"] == 0 and pool["process_count"] == 1
