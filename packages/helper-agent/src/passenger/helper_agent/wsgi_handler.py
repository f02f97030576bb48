"""The WSGI side of one request in an app process: the frames the helper agent sends
become the app's environ and `wsgi.input` (`BodyReader`); the app's status and headers are
checked (`ResponseHead`: a header that could split the response is a 500) and its body
goes back as frames, a list with sendmsg(2), a `wsgi.file_wrapper` file with sendfile(2).

Like `wsgi_loader`, which runs it, this runs with the app's own interpreter and imports
only the standard library; the helper agent sends its source in the startup document.
The frame format comes in as a module (`proto`), loaded the same way.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType
from typing import Any, ClassVar, Protocol


class Lifeline(Protocol):
    """The loader's watch on its stdin: a request in progress holds off the exit."""

    def begin_request(self) -> None: ...
    def end_request(self) -> None: ...


class ChannelLost(Exception):
    """Our connection to the helper agent broke (its client went away, or it did): not
    the app's fault, so not reported as an app error."""


class InvalidResponse(Exception):
    """The app's status or headers cannot be sent as they are: a 500 instead."""


def send(conn: socket.socket, data: bytes) -> None:
    try:
        conn.sendall(data)
    except OSError as exc:
        raise ChannelLost(str(exc)) from None


# Iterators over a list or tuple: never blocking, never endless (a stream is a generator).
SEQUENCE_ITERATORS: tuple[type, ...] = (type(iter([])), type(iter(())))
JOIN_MAX = 64 * 1024  # a body up to this is joined with its head: one plain send
GATHER_MAX = 512  # buffers per sendmsg(2), under the kernel's IOV_MAX (1024)


def send_buffers(conn: socket.socket, buffers: list[bytes]) -> None:
    """Send the buffers in order without joining them: a body of many megabytes is not
    copied in our memory on its way out, only by the kernel."""
    views = [memoryview(b) for b in buffers if b]
    first = 0
    try:
        while first < len(views):
            sent = conn.sendmsg(views[first:first + GATHER_MAX])
            while sent:
                size = len(views[first])
                if sent < size:  # the kernel took part of this buffer
                    views[first] = views[first][sent:]
                    break
                sent -= size
                first += 1
    except OSError as exc:
        raise ChannelLost(str(exc)) from None


class BodyReader:
    """`wsgi.input`: reads the chunk frames of one request body, and signals EOF. If the
    client goes away mid-body (the helper agent closes our connection), it just ends
    early, as a socket would: frameworks see a short body, not an exception of ours.

    `read` takes bytes straight from the frames, each byte copied once however large the
    body and however it is read; only `readline` keeps a buffer (what follows a line)."""

    def __init__(self, rfile: Any, proto: ModuleType) -> None:
        self.rfile = rfile
        self.proto = proto
        self.buffer = b""     # read from the frames, not given to the app yet
        self.frame_left = 0   # bytes of the current frame not read from rfile yet
        self.done = False
        self.lost = False  # the body ended early: the connection is gone

    def _frame_bytes(self, limit: int) -> bytes:
        """Up to `limit` bytes of the body from the frames (b"" at its end)."""
        if not self.frame_left:
            if self.done:
                return b""
            head = self._exact(4)
            if head is None:
                return b""
            self.frame_left = self.proto.LENGTH.unpack(head)[0]
            if not self.frame_left:
                self.done = True
                return b""
        data = self._exact(min(limit, self.frame_left))
        if data is None:
            return b""
        self.frame_left -= len(data)
        return data

    def _exact(self, n: int) -> bytes | None:
        try:
            data = self.rfile.read(n)
        except OSError:
            data = b""
        if len(data) != n:
            self.done = self.lost = True
            self.frame_left = 0
            return None
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:  # all of it
            parts = [self.buffer]
            while data := self._frame_bytes(self.frame_left or 1 << 20):
                parts.append(data)
            self.buffer = b""
            return b"".join(parts)
        if len(self.buffer) >= size:
            data, self.buffer = self.buffer[:size], self.buffer[size:]
            return data
        parts, want = [self.buffer], size - len(self.buffer)
        self.buffer = b""
        while want > 0 and (data := self._frame_bytes(want)):
            parts.append(data)
            want -= len(data)
        return b"".join(parts)

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None or size < 0 else size
        while b"\n" not in self.buffer and (limit < 0 or len(self.buffer) < limit):
            data = self._frame_bytes(1 << 16)
            if not data:
                break
            self.buffer += data
        end = self.buffer.find(b"\n") + 1 or len(self.buffer)
        if limit >= 0:
            end = min(end, limit)
        data, self.buffer = self.buffer[:end], self.buffer[end:]
        return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        return list(iter(self.readline, b""))

    def __iter__(self) -> Any:
        return iter(self.readline, b"")

    def drain(self) -> None:
        self.buffer = b""
        while self._frame_bytes(1 << 20):
            pass


class FileWrapper:
    """`wsgi.file_wrapper`: a file body the loader sends with sendfile(2) when it is a
    regular file, and by iteration otherwise."""

    def __init__(self, filelike: Any, blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Any:
        read = self.filelike.read
        while True:
            data = read(self.blksize)
            if not data:
                return
            yield data


HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
STATUS = re.compile(r"[2-5][0-9][0-9] [^\x00-\x08\x0a-\x1f\x7f]*")
BAD_VALUE_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
MAX_KNOWN_GOOD = 1024  # header pairs, statuses and names remembered as valid
MAX_CACHED_HEADS = 256  # encoded heads remembered
FILE_FRAME = 1 << 20  # bytes of a file sent in one frame (fstat'd before each)


# What the loader does with each response header, by name (cached): keep it, take it as
# the length (the helper agent frames the response), or keep it and tell the helper
# agent the app sent its own Date or Server. Hop-by-hop fields are kept here and left out
# when the head is encoded (app_protocol.HOP_BY_HOP): they are the helper agent's to set.
KEEP, LENGTH_FIELD, DATE, SERVER = range(4)
FLAGS = {DATE: 1, SERVER: 2}  # app_protocol.HAS_DATE, HAS_SERVER


def _name_kind(name: str) -> int:
    lname = name.lower()
    if lname == "content-length":
        return LENGTH_FIELD
    return DATE if lname == "date" else SERVER if lname == "server" else KEEP


class ResponseHead:
    """The app's status and headers, checked before anything is sent: a header that
    could split the response, or a status that is not one, gets a 500 instead."""

    __slots__ = ("content_length", "flags", "kept", "status")
    known_good: ClassVar[set[Any]] = set()  # (name, value) pairs seen valid before
    good_statuses: ClassVar[set[str]] = set()
    kinds: ClassVar[dict[str, int]] = {}
    texts: ClassVar[dict[tuple[Any, ...], bytes]] = {}  # (status, *kept) -> head text

    def __init__(self, status: str, headers: list[tuple[str, str]]) -> None:
        self.status = status
        self.kept: list[Any] = []
        self.content_length = -1  # the app's own, or -1
        self.flags = 0
        if status not in self.good_statuses:
            if status.__class__ is not str or STATUS.fullmatch(status) is None:
                raise InvalidResponse(f"invalid status line {status!r} (want '200 OK')")
            if len(self.good_statuses) < MAX_KNOWN_GOOD:
                self.good_statuses.add(status)
        good = self.known_good
        kinds = self.kinds
        for item in headers:
            try:
                known = item in good
            except TypeError:  # a list, not a tuple
                known = False
            name, value = item
            if not known:
                self._check(name, value)
                if len(good) < MAX_KNOWN_GOOD and item.__class__ is tuple:
                    good.add(item)
            kind = kinds.get(name)
            if kind is None:
                kind = _name_kind(name)
                if len(kinds) < MAX_KNOWN_GOOD:
                    kinds[name] = kind
            if kind == KEEP:
                self.kept.append(item)
            elif kind == LENGTH_FIELD:
                self.content_length = int(value)
            else:
                self.flags |= FLAGS[kind]
                self.kept.append(item)

    def _check(self, name: Any, value: Any) -> None:
        if name.__class__ is not str or HEADER_NAME.fullmatch(name) is None:
            raise InvalidResponse(f"invalid response header name {name!r}")
        if value.__class__ is not str:
            raise InvalidResponse(f"the value of the response header {name!r} is a "
                                  f"{type(value).__name__}, not a str")
        if BAD_VALUE_CHARS.search(value):
            raise InvalidResponse(f"the value of the response header {name!r} contains "
                                  f"CR, LF, NUL or another control character")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise InvalidResponse(f"the value of the response header {name!r} has "
                                  f"characters beyond latin-1") from None
        if name.lower() == "content-length" and not value.isdigit():
            raise InvalidResponse(f"invalid Content-Length {value!r}")

    def encode(self, proto: ModuleType, content_length: int) -> bytes:
        key = (self.status, *self.kept)
        try:
            text = self.texts.get(key)
        except TypeError:  # a header given as a list
            text, key = None, ()
        if text is None:
            hop_by_hop = proto.HOP_BY_HOP
            text = proto.response_head_text(self.status, [
                item for item in self.kept if item[0].lower() not in hop_by_hop])
            if key and len(self.texts) < MAX_CACHED_HEADS:
                self.texts[key] = text
        return proto.frame_response_head(content_length, self.flags, text)


def response_head(state: dict[str, Any]) -> ResponseHead:
    """The head the app gave start_response, checked; from now on it is being sent."""
    if state["status"] is None:
        raise RuntimeError("the app returned without calling start_response")
    head = ResponseHead(state["status"], state["headers"])
    state["head"] = head
    return head


class RequestHandler:
    def __init__(self, app: Callable[..., Iterable[bytes]], proto: ModuleType,
                 base_environ: dict[str, Any], app_root: str) -> None:
        self.app = app
        self.proto = proto
        self.base_environ = base_environ
        self.app_root = app_root

    def serve_connection(self, conn: socket.socket, lifeline: Lifeline) -> None:
        rfile = conn.makefile("rb", buffering=65536)
        length = self.proto.LENGTH
        while True:
            head = rfile.read(4)
            if len(head) < 4:
                return
            lifeline.begin_request()
            try:
                block = rfile.read(length.unpack(head)[0])
                try:
                    environ = self.proto.decode_environ(block)
                except self.proto.ProtocolError as exc:
                    print(f"[passenger] {self.app_root}: a request frame does not decode "
                          f"({exc}); closing the connection", file=sys.stderr)
                    return
                body = BodyReader(rfile, self.proto)
                self.handle(environ, body, conn)
                body.drain()
                if body.lost:
                    return
            finally:
                lifeline.end_request()

    def wsgi_environ(self, cgi: dict[str, str], body: BodyReader) -> dict[str, Any]:
        """The WSGI environ of a request: ours, then the request's fields, its body."""
        environ: dict[str, Any] = dict(self.base_environ)
        environ.update(cgi)
        environ["wsgi.input"] = body
        if "CONTENT_LENGTH" not in cgi:
            # Only then: with a length, frameworks bound their reads by it and can tell
            # a body cut short by a client that went away (werkzeug: 400, no traceback).
            environ["wsgi.input_terminated"] = True
        return environ

    def handle(self, cgi: dict[str, str], body: BodyReader, conn: socket.socket) -> None:
        """Run the app on one request and send its response as frames on `conn`; an
        error before the response head is a 500, after it an abort."""
        proto = self.proto
        environ = self.wsgi_environ(cgi, body)
        is_head = cgi.get("REQUEST_METHOD") == "HEAD"
        state: dict[str, Any] = {"status": None, "headers": None, "head": None}

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], None]:
            if exc_info:
                try:
                    if state["head"] is not None:
                        raise exc_info[1].with_traceback(exc_info[2])
                finally:
                    exc_info = None
            elif state["status"] is not None:
                raise AssertionError("start_response called twice without exc_info")
            state["status"], state["headers"] = status, headers
            return write

        def write(data: bytes) -> None:
            out = []
            if state["head"] is None:
                head = response_head(state)
                out.append(head.encode(proto, head.content_length))
            if data and not is_head:
                out += (proto.LENGTH.pack(len(data)), data)
            if not out:
                return
            if len(out) == 1 or len(data) <= JOIN_MAX:
                send(conn, b"".join(out))
            else:
                send_buffers(conn, out)

        result: Any = None
        try:
            result = self.app(environ, start_response)
            self._send_result(conn, result, state, write, is_head)
        except ChannelLost:
            raise
        except InvalidResponse as exc:
            self._fail(conn, state, f"the WSGI application's response is invalid: {exc}",
                       traceback_too=False)
        except Exception:
            self._fail(conn, state, "the WSGI application raised an exception:")
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def _send_result(self, conn: socket.socket, result: Any, state: dict[str, Any],
                     write: Callable[[bytes], None], is_head: bool) -> None:
        """What the app returned, as frames: in one write with its length when it is
        all there (a list, or a list behind an object), a regular file by sendfile(2),
        else each chunk as the iteration yields it."""
        if state["head"] is None and state["status"] is not None:
            if isinstance(result, (list, tuple)):
                self._send_whole(conn, response_head(state), result, is_head)
                return
            if result.__class__ is FileWrapper and self._send_file(
                    result, response_head(state), conn, is_head):
                return
        chunks: Iterator[bytes] = iter(result)
        if type(chunks) in SEQUENCE_ITERATORS and state["head"] is None \
                and state["status"] is not None:
            # A list behind an object (Django's HttpResponse): all there, so it
            # goes as a list does, in one write with its length, not chunked.
            self._send_whole(conn, response_head(state), list(chunks), is_head)
            return
        for chunk in chunks:
            if chunk:
                write(chunk)
        if state["head"] is None:
            head = response_head(state)
            send(conn, head.encode(self.proto, head.content_length if is_head else 0))
        send(conn, self.proto.END)

    def _send_whole(self, conn: socket.socket, head: ResponseHead,
                    chunks: list[bytes] | tuple[bytes, ...], is_head: bool) -> None:
        """A body known whole: one write, with its length."""
        proto = self.proto
        size = sum(len(chunk) for chunk in chunks)
        length = head.content_length
        if length < 0 and not is_head:  # HEAD: never a length we invent
            length = size
        if size and not is_head:
            frames = [head.encode(proto, length), proto.LENGTH.pack(size), *chunks,
                      proto.END]
            if size <= JOIN_MAX:
                send(conn, b"".join(frames))
            else:
                send_buffers(conn, frames)
        else:
            send(conn, head.encode(proto, length) + proto.END)

    def _fail(self, conn: socket.socket, state: dict[str, Any], message: str,
              traceback_too: bool = True) -> None:
        proto = self.proto
        print(f"Error in {self.app_root}: {message}"
              + ("" if traceback_too else "; answering 500 Internal Server Error"),
              file=sys.stderr)
        if traceback_too:
            traceback.print_exc()
        sys.stderr.flush()
        if state["head"] is not None:
            send(conn, proto.ABORT)
            return
        body_bytes = b"Internal Server Error\n"
        send(conn, proto.encode_response_head(
            len(body_bytes), "500 Internal Server Error",
            [("Content-Type", "text/plain")]) + proto.encode_chunk(body_bytes) + proto.END)

    def _send_file(self, wrapper: FileWrapper, head: ResponseHead, conn: socket.socket,
                   is_head: bool) -> bool:
        """A regular file goes from the page cache to our socket with sendfile(2), in
        frames of FILE_FRAME bytes; False if it is not one (it is iterated instead)."""
        try:
            fd = wrapper.filelike.fileno()
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            offset = wrapper.filelike.tell()
            size = max(0, os.fstat(fd).st_size - offset)
        except (AttributeError, OSError, ValueError):
            return False
        length = size if head.content_length < 0 else min(size, head.content_length)
        announced = head.content_length if head.content_length >= 0 or is_head else size
        send(conn, head.encode(self.proto, announced))
        if is_head:
            send(conn, self.proto.END)
            return True
        out = conn.fileno()
        sent = 0
        while sent < length:
            # A file that shrank since we began ends the response early (the helper
            # agent sees fewer bytes than announced and closes the client's connection).
            available = os.fstat(fd).st_size - offset - sent
            frame = min(length - sent, FILE_FRAME, available)
            if frame <= 0:
                break
            send(conn, self.proto.LENGTH.pack(frame))
            done = 0
            while done < frame:
                try:
                    n = os.sendfile(out, fd, offset + sent + done, frame - done)
                except OSError as exc:
                    if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                        raise ChannelLost(str(exc)) from None
                    n = 0
                if n == 0:  # it shrank (or failed) within this frame: fill it, abort
                    send(conn, bytes(frame - done) + self.proto.ABORT)
                    return True
                done += n
            sent += frame
        send(conn, self.proto.END)
        return True
