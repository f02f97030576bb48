"""The pages the server itself answers with: plain error pages, and the spawn error page
(detailed with friendly error pages on, undisclosed otherwise, as Passenger). Unlike
Passenger's, the detailed page shows only the variables we set for the app, never the
server's own environment, and masks any whose name looks secret."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping

REASONS = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           413: "Content Too Large", 414: "URI Too Long", 417: "Expectation Failed",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
           504: "Gateway Timeout", 505: "HTTP Version Not Supported"}

QUEUE_FULL_PAGE = ("This website is under heavy load (queue full). We're sorry, too many "
                   "people are accessing this website at the same time. We're working on "
                   "this problem. Please try again later.")

_date_cache: list[object] = [0, b""]


def http_date() -> bytes:
    """The Date header's value, formatted once per second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode()
    return _date_cache[1]  # type: ignore[return-value]


def escape(text: str) -> str:
    """HTML-escaped, as html.escape does (that module would cost the helper agent half
    a megabyte of memory for five replacements)."""
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&#x27;"))


def status_line(status: int) -> str:
    return f"{status} {REASONS.get(status, 'Error')}"


def simple_page(status: int, reason: str) -> str:
    title = status_line(status)
    return (f"<!DOCTYPE html>\n<html><head><title>{title}</title></head><body>"
            f"<h1>{title}</h1><p>{escape(reason)}</p></body></html>\n")


def error_response(status: int, page: str, close: bool, head_only: bool = False,
                   server: bytes = b"") -> bytes:
    """`server`: the whole Server header line, or nothing (--no-server-header)."""
    body = page.encode()
    head = (f"HTTP/1.1 {status_line(status)}\r\nContent-Type: text/html; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-cache, no-store\r\n").encode()
    head += b"Date: " + http_date() + b"\r\n" + server
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + (b"" if head_only else body)


# Anywhere in the name, case-insensitive; PASSENGER_* is ours, not a password.
SECRET_NAME = re.compile(r"SECRET|KEY|TOKEN|PASSWORD|PASS(?!ENGER)|CREDENTIAL|AUTH",
                         re.IGNORECASE)


def masked(name: str, value: str) -> str:
    """A variable whose name looks secret is shown without its value."""
    return "********" if SECRET_NAME.search(name) else value


def spawn_error_page(app_root: str, message: str, output: list[str],
                     environment: Mapping[str, str], friendly: bool) -> str:
    if not friendly:
        return ("<!DOCTYPE html>\n<html><head><title>We're sorry, but something went wrong"
                "</title></head><body><h1>We're sorry, but something went wrong.</h1>"
                "<p>The issue has been logged for investigation. Please try again later.</p>"
                "</body></html>\n")
    env_rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(masked(k, v))}</td>"
                       f"</tr>" for k, v in sorted(environment.items()))
    out = escape("\n".join(output)) or "(no output)"
    return (
        "<!DOCTYPE html>\n<html><head><title>Web application could not be started</title>"
        "<style>body{font-family:sans-serif;margin:2em}pre{background:#f4f4f4;padding:1em;"
        "overflow:auto}th{text-align:left;padding-right:1em}</style></head><body>"
        "<h1>Web application could not be started</h1>"
        f"<p>The application in <code>{escape(app_root)}</code> failed to start:</p>"
        f"<pre class=\"error\">{escape(message)}</pre>"
        f"<h2>Application output</h2><pre class=\"output\">{out}</pre>"
        f"<h2>Environment</h2><table>{env_rows}</table>"
        "<p>This page is shown because friendly error pages are on (the default outside "
        "staging and production; <code>--no-friendly-error-pages</code> turns it off). "
        "The error is in the log too.</p></body></html>\n")
