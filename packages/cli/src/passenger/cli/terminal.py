"""What the tools print goes to a terminal: control characters in it (from an app's
output, or from an instance that is not what it claims) are shown escaped, never sent
as such, so no text can move the cursor, retitle the window or forge lines."""

from __future__ import annotations

import sys
from typing import TextIO

_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))
            if c not in (0x09, 0x0A)}


def printable(text: str) -> str:
    return text.translate(_ESCAPES)


class EscapingStream:
    """A text stream whose writes are `printable`."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(printable(text))

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)


def protect_output() -> None:
    """Escape control characters in everything this process prints."""
    if not isinstance(sys.stdout, EscapingStream):
        sys.stdout = EscapingStream(sys.stdout)
        sys.stderr = EscapingStream(sys.stderr)
