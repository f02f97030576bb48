"""How a parent hands a child process its configuration and learns that it is ready.

Parent -> child: the child's stdin (an anonymous pipe) carries one JSON document on one
line. The parent keeps the pipe open afterwards: EOF on it later means the parent is gone
(the lifeline), and the child must exit. Later JSON lines on it are notes from the
parent (the watchdog tells the helper agent how many of its log lines it dropped).

Child -> parent: an inherited pipe whose fd number is in the document as `feedback_fd`
carries one JSON line::

    {"status": "ready", ...extra facts}
    {"status": "error", "message": "one line for the user"}

Used between the watchdog and its agents, and between the helper agent and app processes.
The lines are written by `app_protocol`'s encode_document, report_ready and report_error
(re-exported here): the app-side loader can load only that module, and the format must
have one writer.
"""

from __future__ import annotations

import json
import os
import sys

from passenger.common.app_protocol import encode_document, report_error, report_ready

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs each agent 0.6 MB at run time
    from typing import Any, BinaryIO

__all__ = ["encode_document", "parse_feedback", "read_feedback_line",
           "read_startup_document", "report_error", "report_ready"]


def read_startup_document(stream: BinaryIO | None = None) -> dict[str, Any]:
    stream = stream or sys.stdin.buffer
    line = stream.readline()
    if not line:
        raise SystemExit("no startup document on stdin (this program is started by its parent)")
    doc = json.loads(line)
    if not isinstance(doc, dict):
        raise SystemExit("startup document must be a JSON object")
    return doc


def parse_feedback(line: bytes) -> dict[str, Any]:
    """Decode the child's feedback line; a child that died silently gives an error."""
    if not line.strip():
        return {"status": "error", "message": "exited before reporting readiness"}
    try:
        msg = json.loads(line)
    except ValueError:
        return {"status": "error", "message": f"sent unreadable feedback: {line[:200]!r}"}
    if not isinstance(msg, dict) or msg.get("status") not in ("ready", "error"):
        return {"status": "error", "message": f"sent unexpected feedback: {line[:200]!r}"}
    return msg


async def read_feedback_line(fd: int) -> bytes:
    """Read the child's one feedback line (or whatever came before EOF) without blocking
    the event loop; closes `fd`."""
    import asyncio  # here: the logging agent and the CLI use this module without a loop

    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    data = bytearray()
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        data.extend(chunk)
        if (not chunk or b"\n" in chunk) and not done.done():
            done.set_result(bytes(data.split(b"\n", 1)[0]))

    loop.add_reader(fd, readable)
    try:
        return await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)
