"""One request as `passenger-status --show=requests` shows it: its app and process,
method and path, age, and where it is in its exchange, in words."""

from __future__ import annotations

from passenger.helper_agent.proxied_request import (
    FINISHED,
    IN_APP,
    RELEASED,
    RESPONDING,
    Request,
)


def describe(request: Request, waiting_behind: int, now: float) -> dict[str, object]:
    """One request; `waiting_behind`: how many requests are before it on its connection."""
    head = request.head
    if waiting_behind:
        state = "waiting behind earlier requests on its connection"
    elif request.state is FINISHED or request.state is RELEASED:
        state = "writing the response to the client"
    elif request.state is RESPONDING:
        state = "receiving the response from the app"
    elif request.state is IN_APP:
        state = "in the app"
    elif not request.body_done and request.spool is not None:
        state = "reading the body from the client"
    else:
        state = "queued"
    return {
        "app": request.group.name if request.group else None,
        "pid": request.process.pid if request.process else None,
        "method": head.method.decode("latin-1") if head else None,
        "path": head.target.decode("latin-1") if head else None,
        "age": round(now - request.started, 3), "state": state,
        "status": request.status or None, "bytes_sent": request.bytes_sent,
    }
