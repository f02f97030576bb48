"""Big bodies: how fast each server moves one large response or upload over one
connection on 127.0.0.1, timed by a small client of our own (not wrk).

The client (http.client over one fresh connection per transfer) times from sending the
request to the last byte of the response: downloads are read with `readinto` into a
1 MiB buffer until the body ends, and must have exactly the expected length; an upload
sends its headers (with Content-Length, no `Expect: 100-continue`) and then the file with
`socket.sendfile`, and the app's answer must be the byte count. Speeds are MB/s with
MB = 10^6 bytes (so 1 GB/s = 1000 MB/s). Each case gets one unrecorded transfer per
server first (page cache, first request of each app process), then `reps` measured ones,
the order of the servers rotated from rep to rep as in throughput.py.
"""

from __future__ import annotations

import http.client
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import appsetup
from benchmarks.servers import Server
from benchmarks.throughput import rotated

BUFFER = 1024 * 1024
TIMEOUT = 60.0      # per socket operation, and for a whole transfer


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    method: str
    path: str
    size: int
    static_only: bool = False   # only for servers that serve APP_DIR/public themselves


CASES = [
    Case("bytes", "32 MiB response made by the app (bytes in a list)", "GET", "/bytes",
         appsetup.BYTES_BODY),
    Case("file_wrapper", "100 MiB file through wsgi.file_wrapper", "GET", "/file",
         appsetup.BIG_FILE_BYTES),
    Case("static", "100 MiB static file from APP_DIR/public (by the server, no app)", "GET",
         "/" + appsetup.STATIC_PATH.removeprefix("public/"), appsetup.BIG_FILE_BYTES,
         static_only=True),
    Case("upload", "100 MiB upload, read fully from wsgi.input", "POST", "/upload",
         appsetup.BIG_FILE_BYTES),
]


class TransferError(Exception):
    pass


@dataclass
class Result:
    """MB/s of each measured transfer of one case on one server, or why it failed."""

    mb_per_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    na: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.mb_per_s) if self.mb_per_s else None

    def summary(self) -> str:
        if self.na:
            return self.na
        if not self.mb_per_s:
            return f"failed: {self.errors[-1] if self.errors else '?'}"
        v = self.mb_per_s
        text = f"{statistics.median(v):,.0f} [{min(v):,.0f}–{max(v):,.0f}]"
        return text + (f" ({len(self.errors)} failed)" if self.errors else "")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mb_per_s": [round(x, 1) for x in self.mb_per_s]}
        if self.mb_per_s:
            out["median_mb_per_s"] = round(statistics.median(self.mb_per_s), 1)
        if self.errors:
            out["errors"] = self.errors
        if self.na:
            out["na"] = self.na
        return out


def download(port: int, path: str, expected: int) -> float:
    """GET path; -> seconds from the request to the body's last byte."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    buf = memoryview(bytearray(BUFFER))
    try:
        t0 = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        if resp.status != 200:
            raise TransferError(f"HTTP {resp.status} for GET {path}")
        total = 0
        while n := resp.readinto(buf):
            total += n
            if time.perf_counter() - t0 > TIMEOUT:
                raise TransferError(f"GET {path}: not done within {TIMEOUT:g} s")
        elapsed = time.perf_counter() - t0
    except (OSError, http.client.HTTPException) as e:
        raise TransferError(f"GET {path}: {e!r}") from e
    finally:
        conn.close()
    if total != expected:
        raise TransferError(f"GET {path}: {total} bytes, expected {expected}")
    return elapsed


def upload(port: int, path: str, file: Path, size: int) -> float:
    """POST the file with Content-Length; -> seconds from the request to the answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        with open(file, "rb") as f:
            t0 = time.perf_counter()
            conn.putrequest("POST", path)
            conn.putheader("Content-Type", "application/octet-stream")
            conn.putheader("Content-Length", str(size))
            conn.endheaders()
            assert conn.sock is not None
            conn.sock.sendfile(f)
            resp = conn.getresponse()
            body = resp.read()
            elapsed = time.perf_counter() - t0
    except (OSError, http.client.HTTPException) as e:
        raise TransferError(f"POST {path}: {e!r}") from e
    finally:
        conn.close()
    if resp.status != 200:
        raise TransferError(f"HTTP {resp.status} for POST {path}")
    if body.strip() != str(size).encode():
        raise TransferError(f"POST {path}: the app read {body.strip()[:40]!r} bytes, "
                            f"expected {size}")
    return elapsed


def serves_static(server: Server, path: str) -> bool:
    """Whether a HEAD of public/PATH is answered 200: the app itself answers 404 (only
    ours is expected to serve public/; Passenger 6's builtin engine hands it to the app,
    its nginx engine would serve it)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("HEAD", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def transfer(server: Server, case: Case, upload_file: Path) -> float:
    """One transfer of `case` on `server`; -> MB/s."""
    if case.method == "POST":
        seconds = upload(server.port, case.path, upload_file, case.size)
    else:
        seconds = download(server.port, case.path, case.size)
    return case.size / seconds / 1e6


def run(servers: list[Server], reps: int, upload_file: Path) -> dict[str, dict[str, Result]]:
    """Every case on every server: -> case key -> server label -> Result."""
    out: dict[str, dict[str, Result]] = {}
    for case in CASES:
        results = {s.label: Result() for s in servers}
        active = []
        for s in servers:
            if case.static_only and not (s.serves_static or serves_static(s, case.path)):
                results[s.label].na = "n/a (passes public/ to the app)"
            else:
                active.append(s)
        for s in active:    # unrecorded first transfer
            try:
                transfer(s, case, upload_file)
            except TransferError as e:
                results[s.label].errors.append(f"warm-up: {e}")
        for rep in range(reps):
            for s in rotated(active, rep):
                try:
                    results[s.label].mb_per_s.append(transfer(s, case, upload_file))
                except TransferError as e:
                    results[s.label].errors.append(str(e))
        for s in active:
            print(f"  bigbody {case.key:<13} {s.label:<16} {results[s.label].summary()} MB/s",
                  file=sys.stderr, flush=True)
        out[case.key] = results
    return out
