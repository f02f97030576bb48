"""The pool's and groups' rules with no real process: routing, queue limits, scaling,
idle shutdown, eviction between apps, max-requests jitter, rolling restart order and
sessions that end once. Signals, clocks and timers go through a fake `System`; spawning
through a fake spawner whose processes are in-memory objects. (The same rules are
exercised end to end, with real apps, in tests/integration/test_pool_scenarios.py.)"""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from passenger.common.child_watcher import ChildWatcher
from passenger.common.config import ServerConfig
from passenger.helper_agent.app_channel import ChannelState, ResponseSink
from passenger.helper_agent.app_process import AppProcess, ProcessState, Retirement
from passenger.helper_agent.group import Group
from passenger.helper_agent.pool import Pool
from passenger.helper_agent.spawn_error import SpawnError

PIDS = itertools.count(900_001)  # never signalled: FakeSystem only records


class FakeTimer:
    def __init__(self, system: FakeSystem, due: float, callback: Callable[[], None]) -> None:
        self.system, self.due, self.callback = system, due, callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeSystem:
    """A clock that moves only when told, timers fired by `advance`, signals recorded."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.timers: list[FakeTimer] = []
        self.signals: list[tuple[int, int]] = []

    def kill(self, pid: int, sig: int, process_group: bool = False) -> None:
        self.signals.append((pid, sig))

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(self, self.now + delay, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for timer in sorted(self.timers, key=lambda t: t.due):
            if timer.due <= self.now and not timer.cancelled:
                timer.cancelled = True
                timer.callback()

    def signalled(self, process: AppProcess) -> list[int]:
        return [sig for pid, sig in self.signals if pid == process.pid]


class FakeChild:
    def __init__(self) -> None:
        self.pid = next(PIDS)
        self.stdin = None
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


class FakeChannel:
    """A channel whose app answers when the test says so (`respond`)."""

    def __init__(self) -> None:
        self.sink: ResponseSink | None = None
        self.state = ChannelState.IDLE
        self.on_end: Callable[[FakeChannel], None] = lambda channel: None

    @property
    def available(self) -> bool:
        return self.state is ChannelState.IDLE

    @property
    def app_full(self) -> bool:
        return False

    def take_sink(self) -> ResponseSink | None:
        sink, self.sink = self.sink, None
        return sink

    def start(self, sink: ResponseSink, data: bytes) -> None:
        self.state, self.sink = ChannelState.AWAITING_HEAD, sink

    def respond(self) -> None:
        self.state, self.sink = ChannelState.IDLE, None
        self.on_end(self)

    def write(self, data: bytes) -> None: ...
    def send_file(self, fd: int, offset: int, count: int) -> int: return 0
    def discard(self) -> None: self.sink = None
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def close(self) -> None: self.state = ChannelState.LOST


class FakeRequest:
    def __init__(self, name: str = "") -> None:
        self.name = name
        self.process: AppProcess | None = None
        self.channel: FakeChannel | None = None
        self.failed: tuple[int, str] | None = None

    def assign(self, process: AppProcess, channel: Any) -> None:
        self.process, self.channel = process, channel
        channel.start(self, b"")

    def fail(self, status: int, reason: str, page: str | None = None) -> None:
        self.failed = (status, reason)

    def on_response_abort(self, reason: str, status: int = 502) -> None:
        self.failed = (status, reason)


class FakeSpawner:
    """Spawns at once, or when `release()`d if `hold` is set; fails while `failing`."""

    def __init__(self, group: Group, system: FakeSystem) -> None:
        self.group, self.system = group, system
        self.user = None
        self.launch = FakeLaunch()
        self.preloader = None
        self.spawned: list[AppProcess] = []
        self.failing = ""
        self.hold = False
        self._gate: asyncio.Event | None = None

    async def spawn(self) -> AppProcess:
        if self.hold:
            self._gate = asyncio.Event()
            await self._gate.wait()
        if self.failing:
            raise SpawnError(self.failing, ["output line"])
        process = AppProcess(popen=FakeChild(), socket_path="fake", system=self.system,
                             spawn_started=self.system.now)
        channel = FakeChannel()
        channel.on_end = lambda ch: self.group.on_session_closed(process, ch)
        process.channels.append(channel)
        self.spawned.append(process)
        return process

    def release(self) -> None:
        assert self._gate is not None
        self._gate.set()

    def forget_loaded_code(self) -> None: ...
    def stop_preloader(self, reason: str) -> None: ...
    def stop_idle_preloader(self) -> None: ...
    async def open_channel(self, process: AppProcess) -> Any:
        raise OSError("no reconnecting in these tests")


class FakeLaunch:
    def app_variables(self) -> dict[str, str]:
        return {}


def make_pool(tmp_path: Path, system: FakeSystem, **options: Any) -> Pool:
    config = ServerConfig(app_root=str(tmp_path), static_files=False, **options)
    return Pool(config, str(tmp_path), log_writer=None,  # type: ignore[arg-type]
                instance_name="test", system=system,  # type: ignore[arg-type]
                make_spawner=lambda g, children: FakeSpawner(g, system))  # type: ignore


def spawner(group: Group) -> FakeSpawner:
    assert isinstance(group.spawner, FakeSpawner)
    return group.spawner


async def spawned(group: Group, count: int) -> list[AppProcess]:
    """`count` processes, spawned one after the other as --min-instances would."""
    for _ in range(count):
        group.maybe_spawn()
        await settle()
    assert len(group.processes) == count
    return list(group.processes)


async def settle() -> None:
    """Let spawn tasks run to their next wait."""
    for _ in range(20):
        await asyncio.sleep(0)


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 10))


def test_a_request_goes_to_the_process_with_fewest_sessions_then_least_recently_used(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        system = FakeSystem()
        pool = make_pool(tmp_path, system, min_instances=3, max_pool_size=3,
                         concurrency_model="thread", thread_count=2)
        group = pool.groups[0]
        await spawned(group, 3)
        a, b, c = group.processes
        for process in (a, b, c):  # two channels each
            extra = FakeChannel()
            extra.on_end = lambda ch, p=process: group.on_session_closed(p, ch)
            process.channels.append(extra)
            process.concurrency = 2
        a.last_used, b.last_used, c.last_used = 30.0, 10.0, 20.0
        first, second, third, fourth = (FakeRequest() for _ in range(4))
        group.route(first)
        assert first.process is b  # all idle: the least recently used
        group.route(second)
        assert second.process is c  # b has one session now
        group.route(third)
        assert third.process is a
        group.route(fourth)  # one session each: the least recently used of them
        assert fourth.process is min((a, b, c), key=lambda p: p.last_used)
    run(scenario)


def test_a_full_queue_turns_requests_away_and_a_queued_one_times_out(tmp_path: Path) -> None:
    async def scenario() -> None:
        system = FakeSystem()
        pool = make_pool(tmp_path, system, min_instances=1, max_pool_size=1,
                         max_request_queue_size=2, max_request_queue_time=5)
        pool.start()
        group = pool.groups[0]
        await settle()
        busy, queued1, queued2, rejected = (FakeRequest() for _ in range(4))
        for request in (busy, queued1, queued2, rejected):
            group.route(request)
        assert busy.process is not None
        assert queued1.process is None and queued1.failed is None
        assert rejected.failed is not None and rejected.failed[0] == 503
        assert group.queue.rejected == 1 and len(group.queue) == 2
        system.advance(5.0)
        assert queued1.failed == (504, "The request waited more than 5 s in the queue")
        assert queued2.failed is not None and group.queue.timed_out == 2
        pool.upkeep_task.cancel()  # type: ignore[union-attr]
    run(scenario)


def test_queued_requests_scale_the_group_up_to_max_pool_size_and_no_further(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        system = FakeSystem()
        pool = make_pool(tmp_path, system, min_instances=1, max_pool_size=3)
        group = pool.groups[0]
        await spawned(group, 1)
        requests = [FakeRequest() for _ in range(6)]
        for request in requests:
            group.route(request)
            await settle()
        assert len(group.processes) == 3
        assert sum(r.process is not None for r in requests) == 3
        assert len(group.queue) == 3 and not group.spawns.running
        # A response frees a process: the oldest queued request takes it.
        served = requests[0]
        assert served.channel is not None
        served.channel.respond()
        assert requests[3].process is served.process
    run(scenario)


def test_idle_processes_stop_after_pool_idle_time_down_to_min_instances(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        system = FakeSystem()
        pool = make_pool(tmp_path, system, min_instances=1, max_pool_size=3,
                         pool_idle_time=300)
        group = pool.groups[0]
        await spawned(group, 1)
        requests = [FakeRequest() for _ in range(3)]
        for request in requests:
            group.route(request)
            await settle()
        assert len(group.processes) == 3
        for request in requests:
            assert request.channel is not None
            request.channel.respond()
        system.advance(299)
        group.upkeep(system.now, 300, lambda pid: None)
        assert all(p.state is ProcessState.ENABLED for p in group.processes)
        system.advance(1)
        group.upkeep(system.now, 300, lambda pid: None)
        stopping = [p for p in group.processes if p.state is ProcessState.SHUTTING_DOWN]
        assert len(stopping) == 2 and len(group.active()) == 1
        assert all(system.signalled(p) == [signal.SIGTERM] for p in stopping)
        system.advance(5)  # STOP_KILL_AFTER: still there, so SIGKILL
        assert all(system.signalled(p) == [signal.SIGTERM, signal.SIGKILL] for p in stopping)
    run(scenario)


def test_a_full_pool_stops_another_apps_oldest_idle_process_to_make_room(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        system = FakeSystem()
        pool = make_pool(tmp_path, system, max_pool_size=2, apps=(
            {"app_root": str(tmp_path), "base_uri": "/a"},
            {"app_root": str(tmp_path), "base_uri": "/b"}))
        a, b = pool.groups
        first, second = FakeRequest(), FakeRequest()
        a.route(first)
        await settle()
        a.route(second)
        await settle()
        assert len(a.processes) == 2
        for request in (first, second):
            assert request.channel is not None
            request.channel.respond()
        older = min(a.processes, key=lambda p: p.last_used)
        system.advance(1)
        for_b = FakeRequest()
        b.route(for_b)
        await settle()
        assert older.state is ProcessState.SHUTTING_DOWN
        assert for_b.process is not None and for_b.process in b.processes
    run(scenario)


def test_each_process_gets_a_max_requests_limit_of_its_own_and_is_replaced_at_it(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        system = FakeSystem()
        pool = make_pool(tmp_path, system, min_instances=3, max_pool_size=4,
                         max_requests=10, max_requests_jitter=2)
        group = pool.groups[0]
        await spawned(group, 3)
        limits = sorted(p.request_limit for p in group.processes)
        assert limits == [10, 11, 12]  # jitter: no two processes recycle together
        process = next(p for p in group.processes if p.request_limit == 10)
        process.processed = 9
        request = FakeRequest()
        process.last_used = 0.0  # the least recently used: it gets the request
        group.route(request)
        assert request.process is process and request.channel is not None
        request.channel.respond()
        assert process.retiring is Retirement.MAX_REQUESTS
        assert group.metrics.replaced["max_requests"] == 1
        await settle()  # the successor spawns, then the old one shuts down
        assert process.state is ProcessState.SHUTTING_DOWN and len(group.active()) == 3
    run(scenario)


def test_a_rolling_restart_replaces_one_process_at_a_time_after_its_successor_is_ready(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        system = FakeSystem()
        pool = make_pool(tmp_path, system, min_instances=2, max_pool_size=4)
        group = pool.groups[0]
        await spawned(group, 2)
        old = list(group.processes)
        fake = spawner(group)
        fake.hold = True
        group.rolling_restart()
        await settle()
        assert old[0].retiring is Retirement.ROLLING_RESTART and old[1].retiring is None
        assert all(p.state is ProcessState.ENABLED for p in old)  # until a successor
        fake.release()
        await settle()
        assert old[0].state is ProcessState.SHUTTING_DOWN
        assert old[1].retiring is Retirement.ROLLING_RESTART
        assert old[1].state is ProcessState.ENABLED
        fake.hold = False
        fake.release()
        await settle()
        assert old[1].state is ProcessState.SHUTTING_DOWN
        assert len(group.active()) == 2 and not set(group.active()) & set(old)
    run(scenario)


def test_a_rolling_restart_to_code_that_fails_keeps_the_old_processes(tmp_path: Path) -> None:
    async def scenario() -> None:
        system = FakeSystem()
        pool = make_pool(tmp_path, system, min_instances=2, max_pool_size=4)
        group = pool.groups[0]
        await spawned(group, 2)
        old = list(group.processes)
        spawner(group).failing = "SyntaxError: broken on purpose"
        group.rolling_restart()
        await settle()
        assert all(p.state is ProcessState.ENABLED and p.retiring is None for p in old)
        assert group.last_spawn_error == "SyntaxError: broken on purpose"
        request = FakeRequest()
        group.route(request)
        assert request.process in old  # served, not answered with the error page
        group.spawns.cancel()
    run(scenario)


def test_a_session_ends_once_however_many_paths_report_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        system = FakeSystem()
        pool = make_pool(tmp_path, system, min_instances=1, max_pool_size=1,
                         max_request_time=30)
        group = pool.groups[0]
        await spawned(group, 1)
        process = group.processes[0]
        request = FakeRequest()
        group.route(request)
        assert process.sessions == 1 and request.channel is not None
        system.advance(30)  # --max-request-time: answered 504, the process killed
        assert request.failed is not None and request.failed[0] == 504
        assert process.sessions == 0 and system.signalled(process) == [signal.SIGKILL]
        request.channel.respond()  # the channel reports the end too: no second decrement
        assert process.sessions == 0 and process.processed == 0
    run(scenario)


def test_the_child_watcher_is_the_pools_one_and_holds_no_module_state(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, FakeSystem())
    other = make_pool(tmp_path, FakeSystem())
    assert isinstance(pool.children, ChildWatcher) and pool.children is not other.children


@pytest.mark.parametrize("state", list(ProcessState))
def test_an_app_process_never_leaves_dead(state: ProcessState) -> None:
    process = AppProcess(popen=FakeChild(), socket_path="fake", system=FakeSystem())
    process.state = ProcessState.DEAD
    if state is ProcessState.DEAD:
        return
    with pytest.raises(RuntimeError, match="no edge DEAD"):
        process.change_state(state)
