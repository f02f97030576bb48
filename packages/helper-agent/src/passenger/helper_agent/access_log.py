"""The access log's lines: the combined log format, then the request's duration in seconds
and the PID of the process that served it."""

from __future__ import annotations

import time

_clf_cache: list[object] = [0, ""]
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(32), 127)}


def clf_time() -> str:
    """The combined log format's `[27/Nov/2026:17:53:27 +0000]` time, cached per second."""
    now = int(time.time())
    if _clf_cache[0] != now:
        _clf_cache[0] = now
        _clf_cache[1] = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(now))
    return _clf_cache[1]  # type: ignore[return-value]


def quoted(value: bytes) -> str:
    """Printable ASCII only, so a client cannot forge lines or send terminal escapes to
    whoever reads the log."""
    if not value:
        return "-"
    text = value.decode("ascii", "backslashreplace")
    return text.replace('"', '\\"').translate(_CONTROLS)


def access_line(remote: bytes, request_line: bytes, status: int, size: int,
                referer: bytes, agent: bytes, seconds: float, pid: object) -> str:
    return (f"{remote.decode()} - - {clf_time()} \"{quoted(request_line)}\" "
            f"{status or '-'} {size} \"{quoted(referer)}\" \"{quoted(agent)}\" "
            f"{seconds:.6f} {pid}")
