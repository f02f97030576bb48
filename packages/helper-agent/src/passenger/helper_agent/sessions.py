"""The requests in flight on one app's processes (sessions).

A session opens when a request takes a channel of a process and ends exactly once:
when the response ends, when the client leaves (the channel is closed, so the app stops
working for nobody, and replaced), when the process breaks or exits (the request is
answered 502), or when it runs past --max-request-time (answered 504, the process
killed). What the group does next (recycling, the queue, idle processes) is the group's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from passenger.helper_agent.app_channel import AppChannel, Channel
from passenger.helper_agent.app_process import AppProcess, ProcessState

if TYPE_CHECKING:
    from passenger.common.config import ServerConfig
    from passenger.helper_agent.metrics import AppMetrics
    from passenger.helper_agent.request_queue import PendingRequest
    from passenger.helper_agent.system import System, Timer

log = logging.getLogger(__name__)
SessionClosed = Callable[[AppProcess, Channel], None]


class Sessions:
    def __init__(self, app_name: str, config: ServerConfig, system: System,
                 metrics: AppMetrics,
                 open_channel: Callable[[AppProcess], Awaitable[AppChannel]]) -> None:
        self.app_name = app_name
        self.max_request_time = config.max_request_time
        self.system = system
        self.metrics = metrics
        self._open_channel = open_channel
        self._timers: dict[Channel, Timer] = {}
        self._reconnects: set[asyncio.Task[None]] = set()
        self.timed_out = 0  # requests answered 504 after --max-request-time

    def open(self, process: AppProcess, request: PendingRequest) -> None:
        channel = process.free_channel()
        assert channel is not None, "a process with sessions < concurrency has a free channel"
        process.open_session(channel)
        process.last_used = self.system.time()
        if self.max_request_time:
            self._timers[channel] = self.system.call_later(
                self.max_request_time, lambda: self._timed_out(process, channel))
        request.assign(process, channel)

    def close(self, process: AppProcess, channel: Channel) -> bool:
        """The response on `channel` ended; -> whether its session was still open."""
        if not process.close_session(channel):
            return False  # ended already (answered with an error when its process broke)
        process.processed += 1
        process.last_used = self.system.time()
        self._cancel_timer(channel)
        return True

    def abandon(self, process: AppProcess, channel: Channel, closed: SessionClosed) -> None:
        """The client of the request on `channel` went away: close the channel (the app
        sees EOF/EPIPE and stops working for nobody) and give the process a fresh one;
        `closed(process, channel)` once the slot is free again."""
        self._cancel_timer(channel)
        channel.discard()
        if not isinstance(channel, AppChannel):  # an HTTP channel reconnects by itself
            closed(process, channel)
            return
        task = asyncio.get_running_loop().create_task(self._reconnect(process, channel, closed))
        self._reconnects.add(task)
        task.add_done_callback(self._reconnects.discard)

    async def _reconnect(self, process: AppProcess, old: AppChannel,
                         closed: SessionClosed) -> None:
        try:
            new = await self._open_channel(process)
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
        closed(process, old)  # its slot is free again, on the new channel

    def fail_all(self, process: AppProcess, status: int, reason: str) -> None:
        """Answer every request in flight on `process` with `status`."""
        for channel in process.channels:
            self.fail(process, channel, status, reason)

    def fail(self, process: AppProcess, channel: Channel, status: int, reason: str) -> None:
        self._cancel_timer(channel)
        sink = channel.take_sink()
        if sink is not None:
            process.close_session(channel)
            sink.on_response_abort(reason, status=status)

    def _timed_out(self, process: AppProcess, channel: Channel) -> None:
        self._timers.pop(channel, None)
        self.timed_out += 1
        self.metrics.replaced["max_request_time"] += 1
        log.warning("A request to app process %d (%s) ran longer than --max-request-time "
                    "%d s; answering 504 and replacing the process", process.pid,
                    self.app_name, self.max_request_time)
        self.fail(process, channel, 504, f"The application did not answer within "
                                         f"{self.max_request_time} s")
        if process.state is ProcessState.ENABLED:
            process.change_state(ProcessState.SHUTTING_DOWN)
        process.kill()

    def _cancel_timer(self, channel: Channel) -> None:
        timer = self._timers.pop(channel, None)
        if timer is not None:
            timer.cancel()
