"""A small instrumented WSGI app for the tests: endpoints that report, sleep, echo,
stream, print, fail, allocate, and answer with the statuses, headers and bodies a test
asks for."""

import hashlib
import json
import os
import sys
import time
from urllib.parse import parse_qs

_hoard = []


def application(environ, start_response):
    path = environ["PATH_INFO"]
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", ""),
                                                      keep_blank_values=True).items()}
    headers = [("Content-Type", "text/plain")]
    if path == "/sleep":
        time.sleep(float(query.get("s", "0.2")))
    elif path == "/echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", headers)
        return [body]
    elif path == "/stream":
        start_response("200 OK", headers)
        return (f"part {i}\n".encode() for i in range(int(query.get("n", "3"))))
    elif path.startswith("/env"):
        keys = [k for k, v in environ.items() if isinstance(v, str)]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({k: environ[k] for k in keys}).encode()]
    elif path == "/big":
        start_response("200 OK", headers)
        return [b"x" * (int(query.get("mb", "8")) * 1024 * 1024)]
    elif path == "/chunks":  # a list of many chunks, each a different byte
        n, size = int(query.get("n", "2000")), int(query.get("size", "1024"))
        start_response("200 OK", headers)
        return [bytes([i % 256]) * size for i in range(n)]
    elif path == "/listobj":  # an object iterating over a list, as Django's responses do
        start_response("200 OK", headers)
        return _ListBacked([b"list", b"-backed\n"])
    elif path == "/early":  # answers without reading the request body
        start_response("401 Unauthorized", headers)
        return [b"no\n"]
    elif path == "/endless":
        start_response("200 OK", headers)
        return _endless()
    elif path == "/connerr":
        raise ConnectionRefusedError("the database is down (deliberately)")
    elif path == "/osenv":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(dict(os.environ)).encode()]
    elif path == "/print":
        print(query.get("line", "hello from the app"))
        sys.stdout.flush()
    elif path == "/error":
        raise RuntimeError("deliberate failure for the test")
    elif path == "/alloc":
        block = bytearray(int(query.get("mb", "10")) * 1024 * 1024)
        for i in range(0, len(block), 4096):
            block[i] = 1
        _hoard.append(block)
    elif path == "/status":  # a status, and optionally a body it should not have
        start_response(query.get("code", "204 No Content"), headers)
        return [query["body"].encode()] if "body" in query else []
    elif path == "/sized":  # the app gives its own Content-Length
        start_response("200 OK", [*headers, ("Content-Length", "6")])
        return [b"sized\n"]
    elif path == "/header":  # a response header whose value the client chooses
        start_response("200 OK", [*headers, (query.get("name", "X-Echo"),
                                             query.get("value", ""))])
        return [b"ok\n"]
    elif path.startswith("/redir"):  # a redirect to (part of) the decoded path
        start_response("302 Found", [*headers, ("Location", path[len("/redir"):] or "/")])
        return [b"moved\n"]
    elif path == "/file":  # a file through wsgi.file_wrapper
        wrapper = environ["wsgi.file_wrapper"]
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return wrapper(open(query["path"], "rb"))  # closed by the server, via close()
    elif path == "/digest":  # waits, then reads the whole body: its length and SHA-256
        time.sleep(float(query.get("wait", "0")))
        digest = hashlib.sha256()
        size = 0
        while chunk := environ["wsgi.input"].read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        start_response("200 OK", headers)
        return [f"{size} {digest.hexdigest()}\n".encode()]
    elif path == "/sse":  # server-sent events, one every `every` seconds
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return _events(int(query.get("n", "5")), float(query.get("every", "0.1")))
    elif path == "/upload":  # reads the whole body, then says how much it got
        data = environ["wsgi.input"].read()
        start_response("200 OK", headers)
        return [f"got {len(data)} of {environ.get('CONTENT_LENGTH', '?')}\n".encode()]
    body = f"pid={os.getpid()}\n".encode()
    start_response("200 OK", [*headers, ("X-Pid", str(os.getpid()))])
    return [body]


class _ListBacked:
    def __init__(self, chunks):
        self.chunks = chunks
        self.closed = False

    def __iter__(self):
        return iter(self.chunks)

    def close(self):
        print("listobj closed")
        sys.stdout.flush()


def _events(n, every):
    for i in range(n):
        if i:
            time.sleep(every)
        yield f"data: {i}\n\n".encode()


def _endless():
    ticks = 0
    try:
        while True:
            time.sleep(0.01)
            ticks += 1
            yield b"tick\n"
    finally:  # the server closed the iteration (or dropped it)
        print(f"endless stopped after {ticks} ticks")
        sys.stdout.flush()
