"""`--metrics-address`: /metrics, /healthz and /readyz, served from a thread of the helper
agent, so that a stuck event loop is reported (503 within a second) instead of leaving
the probe without an answer. Each answer is computed on the event loop itself."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from passenger.helper_agent.app_process import ProcessState
from passenger.helper_agent.metrics_exposition import render

if TYPE_CHECKING:
    from passenger.helper_agent.front_end import FrontEnd
    from passenger.helper_agent.pool import Pool

log = logging.getLogger(__name__)
LOOP_DEADLINE = 1.0  # seconds the event loop has to answer
CLIENT_TIMEOUT = 10.0  # a probe that sends nothing is dropped after this
MAX_CLIENTS = 16
MAX_HEAD = 8192
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def readiness(pool: Pool, front: FrontEnd) -> str:
    """Why we are not ready ("" when every app has a ready process and we serve on)."""
    if front.closed:
        return "the server is shutting down"
    waiting = [g.name for g in pool.groups
               if not any(p.state is ProcessState.ENABLED for p in g.processes)]
    if waiting:
        return f"no ready process yet for {', '.join(waiting)}"
    return ""


class MetricsServer:
    """A listener thread, and a short-lived thread per probe (at most MAX_CLIENTS). Not
    http.server: importing it would cost the helper agent 3.3 MB (measured), and a probe
    needs only a request line and an answer."""

    def __init__(self, listener: socket.socket, pool: Pool, front: FrontEnd,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.pool = pool
        self.front = front
        self.listener = listener
        self.listener.settimeout(0.5)  # to notice stop()
        self.clients = threading.BoundedSemaphore(MAX_CLIENTS)
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, name="metrics", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(2)

    def _accept(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.clients.acquire(blocking=False):
                conn.close()  # too many at once: a prober retries
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(CLIENT_TIMEOUT)
            head = b""
            while b"\r\n\r\n" not in head and b"\n\n" not in head:
                data = conn.recv(4096)
                if not data or len(head) > MAX_HEAD:
                    return
                head += data
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
                status, content_type, body = 400, "text/plain", b"bad request\n"
            elif parts[0] not in (b"GET", b"HEAD"):
                status, content_type, body = 405, "text/plain", b"only GET and HEAD\n"
            else:
                path = parts[1].split(b"?", 1)[0].decode("latin-1")
                status, content_type, body = self.answer(path)
            reason = {200: "OK", 400: "Bad Request", 404: "Not Found",
                      405: "Method Not Allowed", 500: "Internal Server Error",
                      503: "Service Unavailable"}.get(status, "Error")
            conn.sendall(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                f"Connection: close\r\n\r\n".encode()
                + (b"" if parts and parts[0] == b"HEAD" else body))
        except OSError:
            pass
        finally:
            conn.close()
            self.clients.release()

    def answer(self, path: str) -> tuple[int, str, bytes]:
        """Runs in the server's threads; whatever it reads, it reads on the loop."""
        if path == "/metrics":
            return self._on_loop(lambda: (200, PROMETHEUS_TYPE,
                                          render(self.pool, self.front).encode()))
        if path == "/healthz":
            return self._on_loop(lambda: (200, "text/plain", b"ok\n"))
        if path == "/readyz":
            def ready() -> tuple[int, str, bytes]:
                why = readiness(self.pool, self.front)
                return (503, "text/plain", f"not ready: {why}\n".encode()) if why else \
                    (200, "text/plain", b"ready\n")
            return self._on_loop(ready)
        return 404, "text/plain", b"not found: try /metrics, /healthz or /readyz\n"

    def _on_loop(self, work: Callable[[], tuple[int, str, bytes]]) -> tuple[int, str, bytes]:
        future: concurrent.futures.Future[tuple[int, str, bytes]] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(work())
            except Exception as exc:  # reported to the prober, and logged
                log.exception("metrics endpoint failed")
                future.set_exception(exc)
        try:
            self.loop.call_soon_threadsafe(run)
            return future.result(timeout=LOOP_DEADLINE)
        except concurrent.futures.TimeoutError:
            return (503, "text/plain",
                    f"the helper agent's event loop did not answer within "
                    f"{LOOP_DEADLINE:.0f} s\n".encode())
        except RuntimeError:  # the loop is closed: we are stopping
            return 503, "text/plain", b"the helper agent is stopping\n"
        except Exception as exc:
            return 500, "text/plain", f"error: {exc}\n".encode()
