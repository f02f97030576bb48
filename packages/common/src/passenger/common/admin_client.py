"""Client of the helper agent's admin API: HTTP/1.1 + JSON over `<instance>/admin.sock`."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any


class AdminError(RuntimeError):
    pass


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def request(socket_path: Path, method: str, path: str, body: Any = None,
            timeout: float = 10.0) -> Any:
    conn = _UnixHTTPConnection(str(socket_path), timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload else {}
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    except OSError as exc:
        raise AdminError(f"cannot talk to the helper agent at {socket_path}: {exc}") from exc
    finally:
        conn.close()
    try:
        decoded = json.loads(data) if data else None
    except ValueError:
        raise AdminError(f"the helper agent answered {resp.status} with non-JSON data") from None
    if resp.status >= 400:
        reason = decoded.get("error") if isinstance(decoded, dict) else None
        raise AdminError(f"the helper agent answered {resp.status}: {reason or resp.reason}")
    return decoded
