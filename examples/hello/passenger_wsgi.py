"""The bundled example app: `passenger start examples/hello`."""

import os


def application(environ, start_response):
    body = f"Hello from process {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
