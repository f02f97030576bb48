"""An app's queue of requests waiting for a process: first in, first out, bounded in
length (--max-request-queue-size: the request over it is turned away at once) and in
time (--max-request-queue-time: a request that waited longer is answered 504)."""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING, Protocol

from passenger.helper_agent.error_pages import QUEUE_FULL_PAGE

if TYPE_CHECKING:
    from passenger.common.config import ServerConfig
    from passenger.helper_agent.app_channel import Channel
    from passenger.helper_agent.app_process import AppProcess
    from passenger.helper_agent.system import System, Timer

log = logging.getLogger(__name__)


class PendingRequest(Protocol):
    """A request as the pool sees it (implemented by the HTTP front end)."""

    def assign(self, process: AppProcess, channel: Channel) -> None: ...
    def fail(self, status: int, reason: str, page: str | None = None) -> None: ...


class RequestQueue(collections.deque[PendingRequest]):
    """The requests themselves are the deque (its length and truth are C calls: they are
    asked on every request while an app is busy); timers and limits beside them."""

    def __init__(self, app_name: str, config: ServerConfig, system: System) -> None:
        super().__init__()
        self.app_name = app_name
        self.max_size = config.max_request_queue_size
        self.max_time = config.max_request_queue_time
        self.overflow_status = config.request_queue_overflow_status_code
        self.system = system
        self._timers: dict[PendingRequest, Timer] = {}
        self.rejected = 0   # turned away because the queue was full
        self.timed_out = 0  # answered 504 after --max-request-queue-time

    @property
    def full(self) -> bool:
        return bool(self.max_size) and len(self) >= self.max_size

    def push(self, request: PendingRequest) -> bool:
        """Queue `request`, or turn it away if the queue is full; -> whether queued."""
        if self.full:
            self.rejected += 1
            log.warning("Request queue of %s is full (--max-request-queue-size %d); "
                        "answering %d", self.app_name, self.max_size, self.overflow_status)
            request.fail(self.overflow_status, QUEUE_FULL_PAGE)
            return False
        self.append(request)
        if self.max_time:
            self._timers[request] = self.system.call_later(
                self.max_time, lambda: self._timed_out(request))
        return True

    def take(self) -> PendingRequest:
        """The oldest request, out of the queue."""
        request = self.popleft()
        timer = self._timers.pop(request, None)
        if timer is not None:
            timer.cancel()
        return request

    def withdraw(self, request: PendingRequest) -> bool:
        """Take out a queued request (its client went away); -> whether it was queued."""
        timer = self._timers.pop(request, None)
        if timer is not None:
            timer.cancel()
        try:
            self.remove(request)
        except ValueError:
            return False
        return True

    def fail_all(self, status: int, reason: str, page: str | None = None) -> None:
        while self:
            self.take().fail(status, reason, page)

    def _timed_out(self, request: PendingRequest) -> None:
        if self.withdraw(request):
            self.timed_out += 1
            log.warning("A request for %s waited longer than --max-request-queue-time %d s",
                        self.app_name, self.max_time)
            request.fail(504, f"The request waited more than {self.max_time} s in the queue")
