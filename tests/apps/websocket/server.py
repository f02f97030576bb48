"""A generic app for the tests (`--app-start-command`): a WebSocket echo server on $PORT,
built with the `websockets` package, that also answers plain HTTP requests with its PID."""

import asyncio
import os
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response


async def echo(websocket: ServerConnection) -> None:
    async for message in websocket:
        await websocket.send(f"echo: {message}" if isinstance(message, str) else message)


def plain_http(connection: ServerConnection, request: Request) -> Response | None:
    if request.path == "/refuse":
        return connection.respond(HTTPStatus.FORBIDDEN, "no WebSocket here\n")
    if "upgrade" in request.headers.get("Connection", "").lower():
        return None  # a WebSocket handshake: go on
    return connection.respond(HTTPStatus.OK, f"plain pid={os.getpid()}\n")


async def main() -> None:
    async with serve(echo, "127.0.0.1", int(os.environ["PORT"]),
                     process_request=plain_http) as server:
        await server.serve_forever()


asyncio.run(main())
