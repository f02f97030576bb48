"""An application group: the processes of one app, its request queue and its spawning.

Routing follows Passenger: a request goes to the enabled process with the fewest open
sessions (ties: the one used least recently); when every process is busy it waits in
the group's FIFO queue (up to --max-request-queue-size), and the group spawns another
process, one at a time, while the pool and --max-instances-per-app allow.

Replacing a process (recycling after --max-requests or over --memory-limit) spawns the
successor first and only then shuts the old one down, so capacity never drops. Shutting
a process down is always graceful: no new requests, the current one finishes, then its
lifeline closes and it gets SIGTERM, then SIGKILL after a bound.

A group asks the pool it shares with other apps for room through `Room` only, and
spawns through its `SpawnLoop`; the pool asks groups through their methods, never their
fields. Signals, clocks and timers go through `System`, so these rules are unit-tested
with fakes (tests/helper_agent/test_group_rules.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
from collections.abc import Callable
from typing import Protocol

from passenger.common.config import AppRoute, ServerConfig
from passenger.common.exit_status import describe_exit
from passenger.helper_agent.app_channel import Channel
from passenger.helper_agent.app_process import AppProcess, ProcessState, Retirement
from passenger.helper_agent.error_pages import spawn_error_page
from passenger.helper_agent.metrics import AppMetrics
from passenger.helper_agent.recycling import RequestLimits
from passenger.helper_agent.request_queue import PendingRequest, RequestQueue
from passenger.helper_agent.restart_files import RestartFiles
from passenger.helper_agent.sessions import Sessions
from passenger.helper_agent.spawn_error import SpawnError
from passenger.helper_agent.spawn_loop import SpawnLoop
from passenger.helper_agent.spawner import Spawner
from passenger.helper_agent.static_files import StaticFiles
from passenger.helper_agent.system import REAL_SYSTEM, System

log = logging.getLogger(__name__)
STOP_KILL_AFTER = 5.0  # after SIGTERM
ENABLED = ProcessState.ENABLED


class Room(Protocol):
    """What a group asks of the pool it shares with other apps (`Pool` answers)."""

    def may_grow(self, group: Group, used: int, for_queued_requests: bool) -> bool:
        """Whether the group (which has `used` places) may have one more process; may
        stop another app's idle process to make room."""
    def wait_for_room(self, group: Group) -> None:
        """Put the group in the top-level queue until room is freed."""
    def on_process_idle(self, group: Group, process: AppProcess) -> None: ...
    def on_room_freed(self) -> None: ...


class Group:
    def __init__(self, config: ServerConfig, route: AppRoute, room: Room,
                 make_spawner: Callable[[Group], Spawner],
                 system: System = REAL_SYSTEM) -> None:
        self.name = config.app_root if route.base_uri == "/" else \
            f"{config.app_root} ({route.base_uri})"
        self.config = config
        self.route_rule = route
        # what the app sees in SCRIPT_NAME: its base URI, b"" at the root
        self.script_name = route.base_uri.rstrip("/").encode("latin-1")
        self.app_root = config.app_root
        self.room = room
        self.system = system
        self.processes: list[AppProcess] = []
        self.queue = RequestQueue(self.name, config, system)
        self.spawner = make_spawner(self)
        self.uuid = secrets.token_urlsafe(15)  # names this group for its lifetime
        self.metrics = AppMetrics()
        self.sessions = Sessions(self.name, config, system, self.metrics,
                                 self.spawner.open_channel)
        user = self.spawner.user
        self.static = StaticFiles(os.path.join(config.app_root, "public"),
                                  user.uid if user else None) if config.static_files else None
        self.spawns = SpawnLoop(self.spawner.spawn,
                                still_wanted=lambda: self.wants_process() and self.may_spawn(),
                                on_spawned=self._spawned, on_failed=self._spawn_failed,
                                on_ended=self._spawning_ended)
        self.last_spawn_error = ""
        self.failed_spawn_page = ""  # shown while the spawn loop waits to retry
        self.stopping = False
        self.request_limits = RequestLimits(config.max_requests, config.max_requests_jitter)
        self.rolling: list[AppProcess] = []  # old processes a rolling restart will replace
        self.restart_files = RestartFiles(config.app_root, config.restart_dir,
                                          config.stat_throttle_rate)

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
            self.sessions.open(best, request)
            return
        if self.spawns.retrying and self.failed_spawn_page and not self.active():
            # Spawning keeps failing and we are waiting to retry: answer now, not later.
            request.fail(500, f"The application could not be started: "
                              f"{self.last_spawn_error}", self.failed_spawn_page)
            return
        if not self.queue.push(request):
            return
        self.maybe_spawn()
        if not self.processes and not self.spawns.running:
            self.room.wait_for_room(self)

    def queue_is_full(self) -> bool:
        """Whether a request arriving now would be turned away (no process free, the
        queue at --max-request-queue-size)."""
        return self.queue.full and not any(p.accepts_requests for p in self.processes)

    def cancel(self, request: PendingRequest) -> None:
        """A queued request whose client went away."""
        self.queue.withdraw(request)

    def dispatch_queue(self) -> None:
        while self.queue:
            process = next((p for p in self.processes if p.accepts_requests), None)
            if process is None:
                break
            self.sessions.open(process, self.queue.take())
        if self.queue:
            self.maybe_spawn()

    # -- events from processes -------------------------------------------------------

    def on_session_closed(self, process: AppProcess, channel: Channel) -> None:
        if not self.sessions.close(process, channel):
            return
        if process.state is ProcessState.SHUTTING_DOWN:
            if process.sessions == 0:
                process.terminate(STOP_KILL_AFTER)
        elif process.request_limit and process.processed >= process.request_limit:
            self.replace(process, Retirement.MAX_REQUESTS,
                         f"has served {process.processed} requests (--max-requests "
                         f"{self.config.max_requests} plus jitter "
                         f"{process.request_limit - self.config.max_requests})")
        self.dispatch_queue()
        if process.idle and not self.queue:
            self.room.on_process_idle(self, process)

    def abandon_channel(self, process: AppProcess, channel: Channel) -> None:
        """The client of the request on `channel` went away."""
        self.sessions.abandon(process, channel, self.on_session_closed)

    def on_channel_lost(self, process: AppProcess) -> None:
        """The connection to the app broke: the process is of no more use."""
        if process.state is ProcessState.ENABLED:
            process.broke = True
            process.change_state(ProcessState.SHUTTING_DOWN)
        # Usually the connection closed because the process is dying: its exit (seen at
        # once through its pidfd) then answers the request in flight with how it ended.
        returncode = process.popen.poll()
        if returncode is not None:
            self.sessions.fail_all(process, 502, f"the application process exited with "
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
        self.sessions.fail_all(process, 502, f"the application process exited with "
                                           f"{process.exit_description}")
        for channel in process.channels:
            channel.close()
        self.dispatch_queue()
        self.maybe_spawn()
        self.room.on_room_freed()

    # -- replacing and stopping processes ----------------------------------------------

    def replace(self, process: AppProcess, why: Retirement, reason: str) -> None:
        """Spawn a successor; the process serves on until it is ready, then shuts down.
        Counted in the metrics by `why`, except for a rolling restart."""
        if process.retiring is not None or process.state is not ProcessState.ENABLED:
            return
        if why is not Retirement.ROLLING_RESTART:
            self.metrics.replaced[why.value] += 1
        process.retire(why, reason)
        log.info("App process %d (%s) %s; replacing it", process.pid, self.name, reason)
        self.maybe_spawn()

    def shut_down(self, process: AppProcess, reason: str) -> None:
        """Gracefully: no new requests, the current one finishes, then it stops."""
        if process.state is not ProcessState.ENABLED:
            return
        log.info("Shutting down app process %d (%s): %s", process.pid, self.name, reason)
        process.change_state(ProcessState.SHUTTING_DOWN)
        if process.sessions == 0:
            process.terminate(STOP_KILL_AFTER)
        else:  # bounded: the current request gets --graceful-timeout
            process.kill_after(self.config.graceful_timeout + STOP_KILL_AFTER)
        self.maybe_spawn()
        self.room.on_room_freed()

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
        self.rolling = [p for p in self.active() if p.retiring is None]
        self._roll_next()
        return len(self.rolling) + sum(1 for p in self.active() if p.retiring is not None)

    def _roll_next(self) -> None:
        while self.rolling:
            process = self.rolling.pop(0)
            if process.state is ProcessState.ENABLED and process.retiring is None:
                self.replace(process, Retirement.ROLLING_RESTART, "rolling restart")
                return
        log.info("Rolling restart of %s done", self.name)

    # -- spawning --------------------------------------------------------------------

    def active(self) -> list[AppProcess]:
        """Processes that serve or will serve: not shutting down, not dead."""
        return [p for p in self.processes if p.state is ProcessState.ENABLED]

    def capacity_used(self) -> int:
        return len(self.active()) + self.spawns.reserved

    def wants_process(self, active: list[AppProcess] | None = None) -> bool:
        """Whether this group needs another process (limits aside)."""
        if self.stopping:
            return False
        if active is None:
            active = self.active()
        if any(p.retiring is not None for p in active):
            return True
        if len(active) < self.config.min_instances:
            return True
        return bool(self.queue) and not any(p.accepts_requests for p in active)

    def may_spawn(self, active: list[AppProcess] | None = None) -> bool:
        limit = self.config.max_instances_per_app
        if active is None:
            active = self.active()
        retiring = sum(1 for p in active if p.retiring is not None)
        if limit and self.capacity_used() - retiring >= limit:
            return False
        if retiring:  # a successor may go over the pool size: its predecessor will leave
            return True
        return self.room.may_grow(self, len(active) + self.spawns.reserved,
                                  for_queued_requests=bool(self.queue))

    def maybe_spawn(self) -> bool:
        """Start spawning if a process is wanted and allowed; -> whether spawning now."""
        if self.spawns.running or self.stopping:
            return self.spawns.running  # the cheap answer, on every request when busy
        active = self.active()
        if self.wants_process(active) and self.may_spawn(active):
            self.spawns.start()
        return self.spawns.running

    def _spawned(self, process: AppProcess) -> None:
        self.last_spawn_error = ""
        if process.state is ProcessState.SPAWNING:  # not dead already
            self._enable(process)

    def _spawning_ended(self) -> None:
        if self.queue and not self.processes:
            self.room.wait_for_room(self)

    def _enable(self, process: AppProcess) -> None:
        self.metrics.spawns += 1
        process.spawn_ended = process.last_used = self.system.time()
        process.request_limit = self.request_limits.choose(
            {p.request_limit for p in self.active()})
        process.change_state(ProcessState.ENABLED)
        self.processes.append(process)
        log.info("App process %d (%s) is ready", process.pid, self.name)
        if self.stopping:
            process.terminate(STOP_KILL_AFTER)
            return
        predecessor = next((p for p in self.processes if p.retiring is not None
                            and p.state is ProcessState.ENABLED), None)
        if predecessor is not None:
            self.shut_down(predecessor, f"its successor {process.pid} is ready")
            if predecessor.retiring is Retirement.ROLLING_RESTART:
                self._roll_next()
        self.dispatch_queue()

    def _spawn_failed(self, exc: SpawnError) -> None:
        self.metrics.spawn_failures += 1
        self.last_spawn_error = str(exc)
        details = "\n".join(exc.output[-20:])
        log.error("Could not spawn a process for %s: %s%s", self.name, exc,
                  f"\nApplication output:\n{details}" if details else "")
        retiring = [p for p in self.active() if p.retiring is not None]
        if retiring:
            # Resisting deployment errors: the old processes keep serving.
            log.error("Keeping the %d old process(es) of %s serving: their replacement "
                      "failed to spawn", len(retiring), self.name)
            for process in retiring:
                process.keep()
            self.rolling.clear()
        self.failed_spawn_page = ""
        if self.active():
            return  # queued requests will be served by the processes that are there
        page = spawn_error_page(self.app_root, str(exc), exc.output,
                                self.spawner.launch.app_variables(),
                                self.config.shows_friendly_error_pages)
        self.failed_spawn_page = page
        self.queue.fail_all(500, f"The application could not be started: {exc}", page)

    # -- what the pool asks ----------------------------------------------------------

    def starving(self) -> bool:
        """Requests wait and no process is there or coming to serve them."""
        return bool(self.queue) and not self.active() and not self.spawns.running

    def has_waiting_requests(self) -> bool:
        return bool(self.queue)

    def spare_idle_processes(self, keep_min_instances: bool) -> list[AppProcess]:
        """Idle processes the pool may stop to make room for another app."""
        active = self.active()
        if keep_min_instances and len(active) <= self.config.min_instances:
            return []
        return [p for p in active if p.idle]

    def busy_sessions(self) -> int:
        return sum(p.sessions for p in self.processes)

    def upkeep(self, now: float, pool_idle_time: int,
               private_dirty_kb: Callable[[int], int | None]) -> None:
        """Once a second: stop processes idle too long (down to --min-instances), replace
        those over --memory-limit, stop an unused preloader."""
        if pool_idle_time:
            for process in sorted(self.active(), key=lambda p: p.last_used):
                if len(self.active()) <= self.config.min_instances:
                    break
                if process.idle and now - process.last_used >= pool_idle_time:
                    self.shut_down(process, f"idle for more than {pool_idle_time} s "
                                            f"(--pool-idle-time)")
        limit_mb = self.config.memory_limit
        for process in self.active() if limit_mb else ():
            if process.retiring is not None:
                continue
            kb = private_dirty_kb(process.pid)
            if kb is not None and kb > limit_mb * 1024:
                self.replace(process, Retirement.MEMORY_LIMIT,
                             f"uses {kb / 1024:.0f} MB of private dirty memory, over "
                             f"--memory-limit {limit_mb} MB")
        self.spawner.stop_idle_preloader()

    # -- shutdown --------------------------------------------------------------------

    async def stop(self, kill_after: float) -> None:
        """Stop every process (in-flight requests have had their time): lifeline closed
        and SIGTERM, then SIGKILL after `kill_after` seconds."""
        self.stopping = True
        self.spawns.cancel()
        preloader = self.spawner.preloader
        self.spawner.stop_preloader("the server is stopping")
        self.queue.fail_all(503, "The server is shutting down")
        for p in list(self.processes):
            if p.state is ProcessState.ENABLED:
                p.change_state(ProcessState.SHUTTING_DOWN)
            p.stop_gracefully()
            p.kill(signal.SIGTERM)  # SIGKILL below, after kill_after
        clock = self.system.monotonic
        deadline = clock() + kill_after
        while self.processes and clock() < deadline:
            await asyncio.sleep(0.02)
        for p in list(self.processes):
            log.warning("App process %d did not stop in time; killing it", p.pid)
            p.kill()
        deadline = clock() + 1.0
        while (self.processes or (preloader and preloader.alive)) and clock() < deadline:
            await asyncio.sleep(0.02)
