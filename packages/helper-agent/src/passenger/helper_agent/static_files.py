"""Files under APP_DIR/public, served by the helper agent without the app, as Passenger
Standalone does (`--no-static-files` turns it off).

Run as root, the helper agent opens them for the world, so the app's owner must not be
able to point it elsewhere: each file is opened relative to public/ with openat2(2)'s
RESOLVE_BENEATH (a symbolic link may not leave public/; without openat2, no link at all
is followed), only regular files readable by others (or owned by the app's user) are
served, dotfiles and `..` never. A path with no file behind it goes to the app.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import stat
import time
from dataclasses import dataclass

SYS_OPENAT2 = 437  # the same number on every Linux architecture (added in 5.6)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08
PUBLIC_RECHECK = 1.0  # seconds before a missing or replaced public/ is looked at again
RANGE = re.compile(rb"bytes=(\d*)-(\d*)")
ACCEPT_ENCODING_ITEM = re.compile(rb"\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*(?:;\s*q=([0-9.]+))?\s*")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_have_openat2 = True


def open_beneath(dir_fd: int, path: bytes) -> int:
    """A read-only descriptor for `path` under `dir_fd`, never resolved outside it."""
    global _have_openat2
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    if _have_openat2:
        how = _OpenHow(flags, 0, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
        fd = _libc.syscall(SYS_OPENAT2, dir_fd, path, ctypes.byref(how),
                           ctypes.sizeof(how))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err != errno.ENOSYS:
            raise OSError(err, os.strerror(err))
        _have_openat2 = False
    parts = path.split(b"/")  # no openat2: every step without following a link
    fd = os.dup(dir_fd)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], flags | os.O_NOFOLLOW, dir_fd=fd)
    finally:
        os.close(fd)


@dataclass
class StaticResponse:
    """What to send: a head, and `length` bytes of `fd` from `offset` (fd -1: none)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    fd: int = -1
    offset: int = 0
    length: int = 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


NOT_FOUND = StaticResponse(404, [])


class StaticFiles:
    def __init__(self, public_dir: str, app_uid: int | None) -> None:
        self.public_dir = public_dir
        self.app_uid = app_uid
        self.dir_fd = -1
        self.checked = 0.0

    def _public(self) -> int:
        """public/'s descriptor, reopened every second (a deploy may replace it)."""
        now = time.monotonic()
        if now - self.checked >= PUBLIC_RECHECK:
            self.checked = now
            if self.dir_fd >= 0:
                os.close(self.dir_fd)
                self.dir_fd = -1
            with contextlib.suppress(OSError):  # public/ itself may not be a link either
                self.dir_fd = os.open(self.public_dir, os.O_RDONLY | os.O_DIRECTORY
                                      | os.O_NOFOLLOW | os.O_CLOEXEC)
        return self.dir_fd

    def lookup(self, method: bytes, path: bytes,
               headers: dict[bytes, bytes]) -> StaticResponse | None:
        """The response for a GET or HEAD of `path` (PATH_INFO, decoded), NOT_FOUND for
        what must never be served, None when the app should answer."""
        if method not in (b"GET", b"HEAD") or path.endswith(b"/") or b"\0" in path:
            return None
        parts = [p for p in path.split(b"/") if p]
        if not parts:
            return None
        if b".." in parts:
            return NOT_FOUND
        dir_fd = self._public()
        if dir_fd < 0:
            return None
        relative = b"/".join(parts)
        opened = self._open(dir_fd, relative)
        if opened is None:
            return None
        fd, st = opened
        if isinstance(st, str):
            return NOT_FOUND  # outside public/
        if any(p.startswith(b".") for p in parts):
            os.close(fd)
            return NOT_FOUND  # dotfiles (.env, .git/...) never, even when they exist
        return self._respond(dir_fd, relative, fd, st, headers)

    def _open(self, dir_fd: int, relative: bytes) -> tuple[int, os.stat_result | str] | None:
        try:
            fd = open_beneath(dir_fd, relative)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.ELOOP):
                return -1, "outside"  # a link out of public/ (or, without openat2, any)
            return None  # no such file, a directory on the way, unreadable: the app's
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not (st.st_mode & stat.S_IROTH or
                                                st.st_uid == self.app_uid):
            os.close(fd)
            return None
        return fd, st

    def _respond(self, dir_fd: int, relative: bytes, fd: int, st: os.stat_result,
                 headers: dict[bytes, bytes]) -> StaticResponse:
        content_type = guess_type(relative)
        encoding = b""
        gz = self._open(dir_fd, relative + b".gz")  # precompressed: file.css.gz
        vary = gz is not None and not isinstance(gz[1], str)
        if gz is not None and not isinstance(gz[1], str) and _accepts_gzip(headers):
            os.close(fd)
            fd, st = gz[0], gz[1]
            encoding = b"gzip"
        elif gz is not None and gz[0] >= 0:
            os.close(gz[0])
        etag = b'"%x-%x%s"' % (int(st.st_mtime), st.st_size, b"-gz" if encoding else b"")
        last_modified = time.strftime("%a, %d %b %Y %H:%M:%S GMT",
                                      time.gmtime(st.st_mtime)).encode()
        common = [(b"ETag", etag), (b"Last-Modified", last_modified)]
        if vary:
            common.append((b"Vary", b"Accept-Encoding"))
        if _not_modified(headers, etag, st.st_mtime):
            os.close(fd)
            return StaticResponse(304, common)
        common += [(b"Content-Type", content_type), (b"Accept-Ranges", b"bytes")]
        if encoding:
            common.append((b"Content-Encoding", encoding))
        size = st.st_size
        wanted = _range(headers, etag, st.st_mtime, size)
        if isinstance(wanted, str):  # unsatisfiable
            os.close(fd)
            return StaticResponse(416, [(b"Content-Range", b"bytes */%d" % size)])
        if wanted is not None:
            start, end = wanted
            return StaticResponse(206, [*common, (b"Content-Range",
                                                  b"bytes %d-%d/%d" % (start, end, size))],
                                  fd, start, end - start + 1)
        return StaticResponse(200, common, fd, 0, size)


_types: dict[bytes, bytes] = {}


def guess_type(relative: bytes) -> bytes:
    """By extension, from the system's mime.types (loaded on the first static file)."""
    ext = os.path.splitext(relative)[1].lower()
    found = _types.get(ext)
    if found is None:
        import mimetypes

        guessed = mimetypes.guess_type("x" + os.fsdecode(ext), strict=False)[0]
        found = (guessed or "application/octet-stream").encode()
        if found.startswith(b"text/") or found in (b"application/javascript",
                                                   b"application/json"):
            found += b"; charset=utf-8"
        _types[ext] = found
    return found


def parse_http_date(value: bytes) -> int | None:
    """IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the one form RFC 9110 lets us
    send and that every client uses; anything else is ignored, as RFC 9110 allows."""
    try:
        parsed = time.strptime(value.decode("ascii").strip(), "%a, %d %b %Y %H:%M:%S GMT")
    except (UnicodeDecodeError, ValueError):
        return None
    import calendar  # only for conditional requests: it brings datetime (0.3 MB)

    return calendar.timegm(parsed)


def _accepts_gzip(headers: dict[bytes, bytes]) -> bool:
    value = headers.get(b"HTTP_ACCEPT_ENCODING")
    if not value:
        return False
    star = False
    for item in value.split(b","):
        match = ACCEPT_ENCODING_ITEM.fullmatch(item)
        if match is None:
            continue
        try:
            q = float(match.group(2) or b"1")
        except ValueError:
            continue
        coding = match.group(1).lower()
        if coding == b"gzip":
            return q > 0
        if coding == b"*":
            star = q > 0
    return star


def _not_modified(headers: dict[bytes, bytes], etag: bytes, mtime: float) -> bool:
    """RFC 9110 13.1.2/13.1.3: If-None-Match (weak comparison) wins over
    If-Modified-Since."""
    none_match = headers.get(b"HTTP_IF_NONE_MATCH")
    if none_match is not None:
        tags = [t.strip().removeprefix(b"W/") for t in none_match.split(b",")]
        return b"*" in tags or etag in tags
    since = headers.get(b"HTTP_IF_MODIFIED_SINCE")
    if since is not None:
        when = parse_http_date(since)
        return when is not None and int(mtime) <= when
    return False


def _range(headers: dict[bytes, bytes], etag: bytes, mtime: float,
           size: int) -> tuple[int, int] | str | None:
    """One satisfiable byte range as (first, last), "unsatisfiable", or None (send it
    all: no Range, several ranges, a bad one, or an If-Range that does not match)."""
    value = headers.get(b"HTTP_RANGE")
    if value is None:
        return None
    if_range = headers.get(b"HTTP_IF_RANGE")
    if if_range is not None and if_range.strip() != etag:
        when = parse_http_date(if_range)
        if when is None or int(mtime) > when:
            return None
    match = RANGE.fullmatch(value.strip())
    if match is None:
        return None  # several ranges, or not bytes: the whole file (RFC 9110 14.2)
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        n = int(last)
        if n == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size:
        return "unsatisfiable"
    if end < start:
        return None
    return start, end
