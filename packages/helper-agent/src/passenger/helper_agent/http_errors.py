"""`HttpError`, what the request parser raises for a request it refuses, and the words
that explain each refusal (a specific status and reason for the client and the log).

The explanations run only on the error path, so they may be slow: they find out which
line or part broke the rule that a fast match over the whole head said was broken.
"""

from __future__ import annotations

import re

from passenger.helper_agent.http_grammar import FIELD, TOKEN


class HttpError(Exception):
    """The request cannot be served: answer `status` with `reason`, then close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def request_line_error(line: bytes) -> HttpError:
    parts = line.split(b" ")
    shown = line[:80]
    if len(parts) != 3 or not all(parts):
        return HttpError(400, f"Malformed request line {shown!r}")
    method, target, version = parts
    if re.fullmatch(TOKEN + rb"+", method) is None:
        return HttpError(400, f"Invalid request method {method[:40]!r}")
    if re.fullmatch(rb"HTTP/\d\.\d", version) is None:
        return HttpError(400, f"Invalid HTTP version {version[:40]!r}")
    return HttpError(400, f"Invalid character in the request target {target[:80]!r}")


def header_error(section: bytes, where: str = "header") -> HttpError:
    for raw in section.split(b"\r\n")[:-1]:
        if FIELD.fullmatch(raw + b"\r\n"):
            continue
        shown = raw[:60]
        if raw[:1] in (b" ", b"\t"):
            return HttpError(400, f"Obsolete line folding in a {where} ({shown!r}) is not "
                                  f"accepted")
        name, colon, _ = raw.partition(b":")
        if not colon:
            return HttpError(400, f"A {where} line without a colon: {shown!r}")
        if re.fullmatch(TOKEN + rb"+", name) is None:
            return HttpError(400, f"Invalid {where} name {name[:60]!r}")
        return HttpError(400, f"Invalid character in the value of the {where} "
                              f"{name.decode('latin-1')!r}")
    return HttpError(400, f"Invalid {where} section (a bare CR or LF)")


def line_too_long(limit: int) -> HttpError:
    return HttpError(414, f"The request line is longer than {limit} bytes "
                          f"(--limit-request-line)")


def too_many_fields(limit: int) -> HttpError:
    return HttpError(431, f"The request has more than {limit} header fields "
                          f"(--limit-request-fields)")


def field_too_large(limit: int) -> HttpError:
    return HttpError(431, f"A header field is longer than {limit} bytes with its CRLF "
                          f"(--limit-request-field-size)")
