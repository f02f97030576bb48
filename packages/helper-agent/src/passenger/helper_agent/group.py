"""An application group: the processes of one app, its request queue and its spawning.

Routing follows Passenger: a request goes to the enabled process with the fewest open
sessions (ties: the one used least recently); when every process is busy it waits in
the group's FIFO queue (up to --max-request-queue-size), and the group spawns another
process, one at a time, while the pool and --max-instances-per-app allow.

Replacing a process (recycling after --max-requests or over --memory-limit) spawns the
successor first and only then shuts the old one down, so capacity never drops. Shutting
a process down is always graceful: no new requests, the current one finishes, then its
lifeline closes and it gets SIGTERM, then SIGKILL after a bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import grp
import logging
import os
import pwd
import secrets
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from passenger.common.config import AppRoute, ServerConfig
from passenger.common.exit_status import describe_exit
from passenger.helper_agent.app_channel import AppChannel, Channel
from passenger.helper_agent.app_process import AppProcess, ProcessState
from passenger.helper_agent.error_pages import QUEUE_FULL_PAGE, spawn_error_page
from passenger.helper_agent.metrics import AppMetrics
from passenger.helper_agent.recycling import RequestLimits
from passenger.helper_agent.restart_files import RestartFiles
from passenger.helper_agent.spawner import Spawner, SpawnError
from passenger.helper_agent.static_files import StaticFiles

if TYPE_CHECKING:
    from passenger.helper_agent.pool import Pool

log = logging.getLogger(__name__)
SPAWN_RETRY_FIRST = 0.5
SPAWN_RETRY_MAX = 30.0
STOP_KILL_AFTER = 5.0  # after SIGTERM
ENABLED = ProcessState.ENABLED


class PendingRequest(Protocol):
    """A request as the pool sees it (implemented by the HTTP front end)."""

    def assign(self, process: AppProcess, channel: Channel) -> None: ...
    def fail(self, status: int, reason: str, page: str | None = None) -> None: ...


class Group:
    def __init__(self, config: ServerConfig, route: AppRoute, pool: Pool,
                 make_spawner: Callable[[Group], Spawner]) -> None:
        self.name = config.app_root if route.base_uri == "/" else \
            f"{config.app_root} ({route.base_uri})"
        self.config = config
        self.route_rule = route
        # what the app sees in SCRIPT_NAME: its base URI, b"" at the root
        self.script_name = route.base_uri.rstrip("/").encode("latin-1")
        self.app_root = config.app_root
        self.pool = pool
        self.processes: list[AppProcess] = []
        self.queue: collections.deque[PendingRequest] = collections.deque()
        self.queue_timers: dict[PendingRequest, asyncio.TimerHandle] = {}
        self.request_timers: dict[Channel, asyncio.TimerHandle] = {}
        self.channel_tasks: set[asyncio.Task[None]] = set()
        self.spawner = make_spawner(self)
        self.uuid = secrets.token_urlsafe(15)  # names this group for its lifetime
        self.metrics = AppMetrics()
        user = self.spawner.user
        self.static = StaticFiles(os.path.join(config.app_root, "public"),
                                  user.uid if user else None) if config.static_files else None
        self.spawning = 0
        self.spawn_task: asyncio.Task[None] | None = None
        self.last_spawn_error = ""
        self.failed_spawn_page = ""  # set while waiting to retry a failed spawn
        self.stopping = False
        self.request_limits = RequestLimits(config.max_requests, config.max_requests_jitter)
        self.rolling: list[AppProcess] = []  # old processes a rolling restart will replace
        self.restart_files = RestartFiles(config.app_root, config.restart_dir,
                                          config.stat_throttle_rate)
        self.requests_rejected = 0
        self.requests_timed_out = 0

    # -- routing ---------------------------------------------------------------------

    def route(self, request: PendingRequest) -> None:
        if self.restart_files.due():
            reason = self.restart_files.check()
            if reason:
                log.info("%s; restarting %s", reason, self.name)
                self.restart()
        best: AppProcess | None = None
        for p in self.processes:  # the fewest sessions; of those, the least recently used
            if p.state is ENABLED and p.sessions < p.concurrency and (
                    best is None or p.sessions < best.sessions
                    or (p.sessions == best.sessions and p.last_used < best.last_used)):
                best = p
        if best is not None:
            self._assign(best, request)
            return
        if self.failed_spawn_page and not self.active():
            # Spawning keeps failing and we are waiting to retry: answer now, not later.
            request.fail(500, f"The application could not be started: "
                              f"{self.last_spawn_error}", self.failed_spawn_page)
            return
        limit = self.config.max_request_queue_size
        if limit and len(self.queue) >= limit:
            self.requests_rejected += 1
            log.warning("Request queue of %s is full (--max-request-queue-size %d); "
                        "answering %d", self.name, limit,
                        self.config.request_queue_overflow_status_code)
            request.fail(self.config.request_queue_overflow_status_code, QUEUE_FULL_PAGE)
            return
        self.queue.append(request)
        if self.config.max_request_queue_time:
            self.queue_timers[request] = asyncio.get_running_loop().call_later(
                self.config.max_request_queue_time, self._queue_timed_out, request)
        self.maybe_spawn()
        if not self.processes and self.spawn_task is None:
            self.pool.wait_for_capacity(self)

    def queue_is_full(self) -> bool:
        """Whether a request arriving now would be turned away (no process free, the
        queue at --max-request-queue-size)."""
        limit = self.config.max_request_queue_size
        return bool(limit) and len(self.queue) >= limit and not any(
            p.accepts_requests for p in self.processes)

    def _assign(self, process: AppProcess, request: PendingRequest) -> None:
        channel = process.free_channel()
        assert channel is not None, "a process with sessions < concurrency has a free channel"
        process.sessions += 1
        process.last_used = time.time()
        if self.config.max_request_time:
            self.request_timers[channel] = asyncio.get_running_loop().call_later(
                self.config.max_request_time, self._request_timed_out, process, channel)
        request.assign(process, channel)

    def _dequeue(self) -> PendingRequest:
        request = self.queue.popleft()
        timer = self.queue_timers.pop(request, None)
        if timer is not None:
            timer.cancel()
        return request

    def cancel(self, request: PendingRequest) -> None:
        """A queued request whose client went away."""
        with contextlib.suppress(ValueError):
            self.queue.remove(request)
        timer = self.queue_timers.pop(request, None)
        if timer is not None:
            timer.cancel()

    def dispatch_queue(self) -> None:
        while self.queue:
            process = next((p for p in self.processes if p.accepts_requests), None)
            if process is None:
                break
            self._assign(process, self._dequeue())
        if self.queue:
            self.maybe_spawn()

    def _queue_timed_out(self, request: PendingRequest) -> None:
        self.queue_timers.pop(request, None)
        with contextlib.suppress(ValueError):
            self.queue.remove(request)
            self.requests_timed_out += 1
            log.warning("A request for %s waited longer than --max-request-queue-time %d s",
                        self.name, self.config.max_request_queue_time)
            request.fail(504, f"The request waited more than "
                              f"{self.config.max_request_queue_time} s in the queue")

    def _request_timed_out(self, process: AppProcess, channel: Channel) -> None:
        self.request_timers.pop(channel, None)
        self.requests_timed_out += 1
        self.metrics.replaced["max_request_time"] += 1
        log.warning("A request to app process %d (%s) ran longer than --max-request-time "
                    "%d s; answering 504 and replacing the process", process.pid, self.name,
                    self.config.max_request_time)
        self._fail_channel(process, channel, 504, f"The application did not answer within "
                                                  f"{self.config.max_request_time} s")
        if process.state is ProcessState.ENABLED:
            process.change_state(ProcessState.SHUTTING_DOWN)
        process.kill()

    # -- events from processes -------------------------------------------------------

    def on_session_closed(self, process: AppProcess, channel: Channel) -> None:
        process.sessions -= 1
        process.processed += 1
        process.last_used = time.time()
        timer = self.request_timers.pop(channel, None)
        if timer is not None:
            timer.cancel()
        if process.state is ProcessState.SHUTTING_DOWN:
            if process.sessions == 0:
                self._stop_process(process)
        elif process.request_limit and process.processed >= process.request_limit:
            self.replace(process, "max_requests",
                         f"has served {process.processed} requests (--max-requests "
                         f"{self.config.max_requests} plus jitter "
                         f"{process.request_limit - self.config.max_requests})")
        self.dispatch_queue()
        if process.idle and not self.queue:
            self.pool.on_process_idle(process)

    def abandon_channel(self, process: AppProcess, channel: Channel) -> None:
        """The client of the request on `channel` went away: close the channel (the app
        sees EOF/EPIPE and stops working for nobody) and give the process a fresh one."""
        timer = self.request_timers.pop(channel, None)
        if timer is not None:
            timer.cancel()
        channel.discard()
        if not isinstance(channel, AppChannel):  # an HTTP channel reconnects by itself
            self.on_session_closed(process, channel)
            return
        task = asyncio.get_running_loop().create_task(self._replace_channel(process, channel))
        self.channel_tasks.add(task)
        task.add_done_callback(self.channel_tasks.discard)

    async def _replace_channel(self, process: AppProcess, old: AppChannel) -> None:
        try:
            new = await self.spawner.open_channel(process)
        except OSError as exc:
            log.warning("Cannot reconnect to app process %d (%s); replacing it", process.pid,
                        exc)
            process.kill()
            return
        if old in process.channels:
            process.channels[process.channels.index(old)] = new
        if process.state is ProcessState.DEAD:
            new.close()
            return
        self.on_session_closed(process, new)

    def on_channel_lost(self, process: AppProcess) -> None:
        """The connection to the app broke: the process is of no more use."""
        if process.state is ProcessState.ENABLED:
            process.broke = True
            process.change_state(ProcessState.SHUTTING_DOWN)
        # Usually the connection closed because the process is dying: its exit (seen at
        # once through its pidfd) then answers the request in flight with how it ended.
        returncode = process.popen.poll()
        if returncode is not None:
            self._fail_in_flight(process, 502, f"the application process exited with "
                                               f"{describe_exit(returncode)}")
        process.kill()

    def on_process_exit(self, process: AppProcess) -> None:
        if process.state is not ProcessState.DEAD:
            was = process.state
            process.change_state(ProcessState.DEAD)
            if process in self.processes:
                expected = self.stopping or (was is ProcessState.SHUTTING_DOWN
                                             and not process.broke)
                if not expected:
                    self.metrics.replaced["crash"] += 1
                log.log(logging.INFO if expected else logging.WARNING,
                        "App process %d (%s) exited with %s%s", process.pid, self.name,
                        process.exit_description, "" if expected else "; replacing it")
        if process in self.processes:
            self.processes.remove(process)
        if process.kill_timer is not None:
            process.kill_timer.cancel()
        self._fail_in_flight(process, 502, f"the application process exited with "
                                           f"{process.exit_description}")
        for channel in process.channels:
            channel.close()
        self.dispatch_queue()
        self.maybe_spawn()
        self.pool.on_capacity_freed()

    def _fail_in_flight(self, process: AppProcess, status: int, reason: str) -> None:
        for channel in process.channels:
            self._fail_channel(process, channel, status, reason)

    def _fail_channel(self, process: AppProcess, channel: Channel, status: int,
                      reason: str) -> None:
        timer = self.request_timers.pop(channel, None)
        if timer is not None:
            timer.cancel()
        if channel.sink is not None:
            sink, channel.sink = channel.sink, None
            process.sessions = max(0, process.sessions - 1)
            sink.on_response_abort(reason, status=status)

    # -- replacing and stopping processes ----------------------------------------------

    def replace(self, process: AppProcess, kind: str, reason: str) -> None:
        """Spawn a successor; the process serves on until it is ready, then shuts down.
        `kind` counts it in the metrics (max_requests, memory_limit; "" for none)."""
        if process.retiring or process.state is not ProcessState.ENABLED:
            return
        if kind:
            self.metrics.replaced[kind] += 1
        process.retiring = reason
        log.info("App process %d (%s) %s; replacing it", process.pid, self.name, reason)
        self.maybe_spawn()

    def shut_down(self, process: AppProcess, reason: str) -> None:
        """Gracefully: no new requests, the current one finishes, then it stops."""
        if process.state is not ProcessState.ENABLED:
            return
        log.info("Shutting down app process %d (%s): %s", process.pid, self.name, reason)
        process.change_state(ProcessState.SHUTTING_DOWN)
        if process.sessions == 0:
            self._stop_process(process)
        else:  # bounded: the current request gets --graceful-timeout
            self._kill_later(process, self.config.graceful_timeout + STOP_KILL_AFTER)
        self.maybe_spawn()
        self.pool.on_capacity_freed()

    def _stop_process(self, process: AppProcess) -> None:
        process.stop_gracefully()
        process.kill(signal.SIGTERM)
        self._kill_later(process, STOP_KILL_AFTER)

    def _kill_later(self, process: AppProcess, delay: float) -> None:
        if process.kill_timer is not None:
            process.kill_timer.cancel()

        def kill() -> None:
            if process.state is not ProcessState.DEAD:
                log.warning("App process %d did not stop in time; killing it", process.pid)
                process.kill()

        process.kill_timer = asyncio.get_running_loop().call_later(delay, kill)

    def detach(self, pid: int) -> bool:
        process = next((p for p in self.processes if p.pid == pid), None)
        if process is None or process.state is not ProcessState.ENABLED:
            return False
        self.shut_down(process, "detached by the administrator")
        return True

    def restart(self) -> int:
        """Passenger's blocking restart: every process shuts down, fresh ones spawn (and
        requests wait for them)."""
        self.rolling.clear()
        self.spawner.forget_loaded_code()
        old = [p for p in self.processes if p.state is ProcessState.ENABLED]
        for process in old:
            self.shut_down(process, "restarting the app")
        self.maybe_spawn()
        return len(old)

    def rolling_restart(self) -> int:
        """One process at a time, each replaced only once its successor is ready; if the
        new code fails to spawn, the old processes keep serving."""
        self.spawner.forget_loaded_code()
        self.rolling = [p for p in self.active() if not p.retiring]
        self._roll_next()
        return len(self.rolling) + sum(1 for p in self.active() if p.retiring)

    def _roll_next(self) -> None:
        while self.rolling:
            process = self.rolling.pop(0)
            if process.state is ProcessState.ENABLED and not process.retiring:
                self.replace(process, "", "rolling restart")
                return
        log.info("Rolling restart of %s done", self.name)

    # -- spawning --------------------------------------------------------------------

    def active(self) -> list[AppProcess]:
        """Processes that serve or will serve: not shutting down, not dead."""
        return [p for p in self.processes if p.state is ProcessState.ENABLED]

    def capacity_used(self) -> int:
        return len(self.active()) + self.spawning

    def wants_process(self, active: list[AppProcess] | None = None) -> bool:
        """Whether this group needs another process (limits aside)."""
        if self.stopping:
            return False
        if active is None:
            active = self.active()
        if any(p.retiring for p in active):
            return True
        if len(active) < self.config.min_instances:
            return True
        return bool(self.queue) and not any(p.accepts_requests for p in active)

    def may_spawn(self, active: list[AppProcess] | None = None) -> bool:
        limit = self.config.max_instances_per_app
        if active is None:
            active = self.active()
        retiring = sum(1 for p in active if p.retiring)
        if limit and self.capacity_used() - retiring >= limit:
            return False
        if retiring:  # a successor may go over the pool size: its predecessor will leave
            return True
        pool = self.pool
        if pool.only_group is self:  # alone in the pool: no one to take room from
            return len(active) + self.spawning < pool.max_pool_size
        if not self.queue:
            # Only --min-instances wants it: free room goes first to an app whose
            # requests wait with no process, and no other app's process is taken.
            return pool.has_capacity() and not pool.starving_groups(self)
        return pool.has_capacity() or pool.free_capacity_for(self)

    def maybe_spawn(self) -> None:
        if self.spawn_task is not None or self.stopping:
            return  # the cheap answer, on the path of every request when the pool is busy
        active = self.active()
        if self.wants_process(active) and self.may_spawn(active):
            self.spawning += 1  # the room is taken now, before the task first runs
            self.spawn_task = asyncio.get_running_loop().create_task(self._spawn_loop())

    async def _spawn_loop(self) -> None:
        """Spawn one process at a time while the group wants one and may have it; each
        turn's room is reserved (`spawning`) before the spawn starts."""
        delay = SPAWN_RETRY_FIRST
        reserved = True
        try:
            while True:
                try:
                    process = await self.spawner.spawn()
                except Exception as exc:  # an unexpected error must not end the loop
                    self.spawning -= 1
                    reserved = False
                    self._spawn_failed(exc if isinstance(exc, SpawnError) else SpawnError(
                        f"{type(exc).__name__}: {exc}", []))
                    try:
                        await asyncio.sleep(delay)
                    finally:
                        self.failed_spawn_page = ""
                    delay = min(delay * 2, SPAWN_RETRY_MAX)
                else:
                    self.spawning -= 1
                    reserved = False
                    delay = SPAWN_RETRY_FIRST
                    self.last_spawn_error = ""
                    if process.state is ProcessState.SPAWNING:  # not dead already
                        self._enable(process)
                if not (self.wants_process() and self.may_spawn()):
                    break
                self.spawning += 1
                reserved = True
        finally:
            if reserved:
                self.spawning -= 1
            self.spawn_task = None
        if self.queue and not self.processes:
            self.pool.wait_for_capacity(self)

    def _enable(self, process: AppProcess) -> None:
        self.metrics.spawns += 1
        process.spawn_ended = process.last_used = time.time()
        process.request_limit = self.request_limits.choose(
            {p.request_limit for p in self.active()})
        process.change_state(ProcessState.ENABLED)
        self.processes.append(process)
        log.info("App process %d (%s) is ready", process.pid, self.name)
        if self.stopping:
            self._stop_process(process)
            return
        predecessor = next((p for p in self.processes if p.retiring
                            and p.state is ProcessState.ENABLED), None)
        if predecessor is not None:
            self.shut_down(predecessor, f"its successor {process.pid} is ready")
            if predecessor.retiring == "rolling restart":
                self._roll_next()
        self.dispatch_queue()

    def _spawn_failed(self, exc: SpawnError) -> None:
        self.metrics.spawn_failures += 1
        self.last_spawn_error = str(exc)
        details = "\n".join(exc.output[-20:])
        log.error("Could not spawn a process for %s: %s%s", self.name, exc,
                  f"\nApplication output:\n{details}" if details else "")
        retiring = [p for p in self.active() if p.retiring]
        if retiring:
            # Resisting deployment errors: the old processes keep serving.
            log.error("Keeping the %d old process(es) of %s serving: their replacement "
                      "failed to spawn", len(retiring), self.name)
            for process in retiring:
                process.retiring = ""
            self.rolling.clear()
        if self.active():
            return  # queued requests will be served by the processes that are there
        page = spawn_error_page(self.app_root, str(exc), exc.output,
                                self.spawner.app_variables(),
                                self.config.shows_friendly_error_pages)
        self.failed_spawn_page = page
        while self.queue:
            self._dequeue().fail(500, f"The application could not be started: {exc}", page)

    # -- shutdown --------------------------------------------------------------------

    async def stop(self, kill_after: float) -> None:
        """Stop every process (in-flight requests have had their time): lifeline closed
        and SIGTERM, then SIGKILL after `kill_after` seconds."""
        self.stopping = True
        if self.spawn_task is not None:
            self.spawn_task.cancel()
        preloader = self.spawner.preloader
        self.spawner.stop_preloader("the server is stopping")
        while self.queue:
            self._dequeue().fail(503, "The server is shutting down")
        for p in list(self.processes):
            if p.state is ProcessState.ENABLED:
                p.change_state(ProcessState.SHUTTING_DOWN)
            p.stop_gracefully()
            p.kill(signal.SIGTERM)
        deadline = time.monotonic() + kill_after
        while self.processes and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for p in list(self.processes):
            log.warning("App process %d did not stop in time; killing it", p.pid)
            p.kill()
        deadline = time.monotonic() + 1.0
        while (self.processes or (preloader and preloader.alive)) \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def snapshot(self, read_metrics: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
        config, user = self.config, self.spawner.user
        return {
            "name": self.name, "app_root": self.app_root,
            "environment": config.environment,
            "uuid": self.uuid,
            "app_type": "generic" if config.app_start_command else "wsgi",
            "start_command": config.app_start_command or
            f"{config.python} (the Passenger WSGI loader)",
            "startup_file": "" if config.app_start_command else
            os.path.join(config.app_root, config.startup_file),
            "spawn_method": config.spawn_method, "python": config.python,
            "start_timeout": config.start_timeout, "min_instances": config.min_instances,
            "max_instances_per_app": config.max_instances_per_app,
            "user": user.name if user else pwd_name(os.getuid()),
            "uid": user.uid if user else os.getuid(),
            "group": group_name(user.gid if user else os.getgid()),
            "gid": user.gid if user else os.getgid(),
            "server_names": list(self.route_rule.server_names),
            "base_uri": self.route_rule.base_uri,
            "requests_in_queue": len(self.queue), "spawning": self.spawning,
            "last_spawn_error": self.last_spawn_error,
            "requests_rejected": self.requests_rejected,
            "requests_timed_out": self.requests_timed_out,
            "processes": [{
                "pid": p.pid, "state": p.state.value, "sessions": p.sessions,
                "processed": p.processed, "spawn_started": p.spawn_started,
                "spawn_ended": p.spawn_ended, "last_used": p.last_used,
                "concurrency": p.concurrency, "request_limit": p.request_limit,
                "retiring": p.retiring, **read_metrics(p.pid),
            } for p in self.processes],
        }



def pwd_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
