"""Client of the helper agent's admin API: HTTP/1.1 + JSON over `<instance>/admin.sock`."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any


class AdminError(RuntimeError):
    """The call failed; the message is the one line users see. `status` is the HTTP
    status the helper agent answered, or None when no answer came (it could not be
    reached, or the connection broke first)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix stream socket (the admin API, or `--socket`)."""
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()  # refused, or no such socket: no descriptor left to the GC
            raise
        self.sock = sock


def request(socket_path: Path, method: str, path: str, body: Any = None,
            timeout: float = 10.0) -> Any:
    """`method` `path` (see admin_paths) with `body` as JSON -> the decoded JSON answer;
    AdminError if the helper agent cannot be reached or answers with an error."""
    conn = UnixHTTPConnection(str(socket_path), timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload else {}
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    except OSError as exc:
        raise AdminError(f"cannot talk to the helper agent at {socket_path}: {exc}") from exc
    except http.client.HTTPException as exc:  # something answered, but not in HTTP
        raise AdminError(f"the helper agent at {socket_path} did not answer in HTTP: "
                         f"{type(exc).__name__}") from exc
    finally:
        conn.close()
    try:
        decoded = json.loads(data) if data else None
    except ValueError:
        raise AdminError(f"the helper agent answered {resp.status} with non-JSON data",
                         resp.status) from None
    if resp.status >= 400:
        reason = decoded.get("error") if isinstance(decoded, dict) else None
        raise AdminError(f"the helper agent answered {resp.status}: {reason or resp.reason}",
                         resp.status)
    return decoded
