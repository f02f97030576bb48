"""Whether an app's response head may go to the client: its shape, and no framing of
its own. Heads checked once are remembered with their status (`VALID_HEADS`): an app
sends the same few heads over and over, so the usual check is one dict lookup.
"""

from __future__ import annotations

import re

# The shape of a response head from an app: a status line, then field lines; no bare CR
# or LF and no control byte anywhere, so nothing can end the head early or add a line.
RESPONSE_HEAD = re.compile(
    rb"[1-5][0-9][0-9] [^\x00-\x08\x0a-\x1f\x7f]*+\r\n"
    rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]++:[ \t]*+[^\x00-\x08\x0a-\x1f\x7f]*+\r\n)*+")
# Framing is ours to set: an app's own would make two (a response the client reads two
# ways). A 101 keeps its Connection: upgrade.
FRAMING_FIELD = re.compile(rb"\n(?i:content-length|transfer-encoding|connection)[ \t]*:")
VALID_HEADS: dict[bytes, int] = {}  # heads checked before (an app sends the same ones
# often) and their statuses
MAX_VALID_HEADS = 4096


class InvalidResponseHead(Exception):
    """The head must not go to the client; the message says what the app sent."""


def check_response_head(head: bytes) -> int:
    """A head not in VALID_HEADS: its shape, and no framing field of its own (the 101 of
    a tunnel keeps its Connection: upgrade). -> its status; raises InvalidResponseHead."""
    if RESPONSE_HEAD.fullmatch(head) is None:
        raise InvalidResponseHead(f"an invalid response head {head[:200]!r}")
    if not head.startswith(b"101 ") and FRAMING_FIELD.search(head) is not None:
        raise InvalidResponseHead(f"a framing header of its own in {head[:200]!r}")
    status = int(head[:3])
    if len(VALID_HEADS) < MAX_VALID_HEADS:
        VALID_HEADS[head] = status
    return status
