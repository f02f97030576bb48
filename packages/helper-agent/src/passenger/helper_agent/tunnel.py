"""An upgraded connection (a WebSocket, say): bytes relayed unparsed between the client
and a generic app until either side closes, as Passenger does for Node apps.

Each side's reading pauses while the other side's write buffer is full, so a slow
reader on one end slows the writer on the other instead of growing our memory.
"""

from __future__ import annotations

import asyncio


class Tunnel:
    def __init__(self, client: asyncio.Transport, app: asyncio.Transport) -> None:
        self.client = client
        self.app = app
        self.closed = False

    def from_client(self, data: bytes) -> None:
        if data and not self.closed:
            self.app.write(data)

    def from_app(self, data: bytes) -> None:
        if data and not self.closed:
            self.client.write(data)

    # -- flow control: a full write buffer on one side pauses reading on the other --

    def client_paused(self) -> None:
        self.app.pause_reading()

    def client_resumed(self) -> None:
        self.app.resume_reading()

    def app_paused(self) -> None:
        self.client.pause_reading()

    def app_resumed(self) -> None:
        self.client.resume_reading()

    # -- either side ending ends both (what was written is still delivered) --------

    def client_eof(self) -> None:
        self.close()

    def client_closed(self) -> None:
        self.close()

    def app_closed(self) -> None:
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.app.close()
            self.client.close()
