"""The app side of a WSGI app process: loads `passenger_wsgi.py` and serves its requests.

Runs with the app's own interpreter, so it imports only the standard library. What we
say to the helper agent (frames, the hop-by-hop fields a head leaves out, the start-up
feedback line) lives in `passenger/common/app_protocol.py`, and how each request is
served in `wsgi_handler.py`, both stdlib-only too, which we load from the sources that
come in the startup document. This module is the process's life.

Life cycle: read one JSON startup document from stdin (the helper agent's bootstrap does,
and runs this file's source from it); load the app; serve on the listening socket the
helper agent bound and handed us; report {"status": "ready"} (or an error with the
traceback) on the feedback fd; serve the connections the helper agent opens, one request
at a time on each: one connection in all by default, or --thread-count of them, each in
a thread of its own, so that that many requests run at once. EOF on stdin means the
helper agent is gone or wants us to stop: we exit, after the requests in progress.
"""

from __future__ import annotations

import ctypes
import gc
import importlib.util
import json
import os
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable, Iterable
from types import FrameType, ModuleType
from typing import Any, NoReturn


def set_process_title(title: str) -> None:
    """Overwrite our argv area (found via /proc/self/stat) so `ps` shows `title`.

    The helper agent pads our argv so the area is long enough; anything longer is cut.
    """
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        arg_start, arg_end = int(fields[45]), int(fields[46])
        data = title.encode()[: arg_end - arg_start - 1]
        ctypes.memmove(arg_start, data + b"\0" * (arg_end - arg_start - len(data)),
                       arg_end - arg_start)
    except (OSError, IndexError, ValueError):
        pass  # a cosmetic failure must never stop the app


def load_module(name: str, path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Lifeline:
    """Watches stdin; on EOF exits now if idle, or once the current request is done."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.busy = 0  # requests in progress
        self.stop_requested = False

    def watch(self) -> None:
        threading.Thread(target=self._run, name="lifeline", daemon=True).start()

    def _run(self) -> None:
        while os.read(0, 4096):
            pass
        with self.lock:
            self.stop_requested = True
            if not self.busy:
                _exit_now()

    def begin_request(self) -> None:
        with self.lock:
            self.busy += 1

    def end_request(self) -> None:
        with self.lock:
            self.busy -= 1
            if self.stop_requested and not self.busy:
                _exit_now()


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def report_failure(proto: ModuleType, feedback_fd: int, exc: BaseException) -> NoReturn:
    """The exception as the start-up error (its traceback to our output too); we exit."""
    tb = traceback.format_exc()
    sys.stderr.write(tb)
    sys.stderr.flush()
    proto.report_error(feedback_fd, f"{type(exc).__name__}: {exc}", traceback=tb)
    os._exit(1)


def load_source(name: str, source: str, filename: str) -> ModuleType:
    """A module from the source the helper agent sent us (the app's user may not be able
    to read our install, and must not need the instance directory)."""
    module = ModuleType(name)
    module.__file__ = filename
    sys.modules[name] = module
    exec(compile(source, filename, "exec"), module.__dict__)
    return module


def load_protocol(doc: dict[str, Any]) -> ModuleType:
    """app_protocol, from the source in the startup document."""
    return load_source("passenger_app_protocol", doc["protocol_source"], doc["protocol_path"])


def load_handler(doc: dict[str, Any]) -> ModuleType:
    """wsgi_handler (what serves each request), from the source in the document."""
    return load_source("passenger_wsgi_handler", doc["handler_source"], doc["handler_path"])


def load_app(doc: dict[str, Any]) -> Callable[..., Iterable[bytes]]:
    os.chdir(doc["app_root"])
    sys.path.insert(0, doc["app_root"])
    module = load_module("passenger_wsgi", os.path.join(doc["app_root"], doc["startup_file"]))
    app = getattr(module, "application", None)
    if not callable(app):
        raise RuntimeError(f"{doc['startup_file']} does not define a callable named "
                           f"'application'")
    return app


BACKTRACES_BEGIN = "--- Passenger: backtraces of every thread (SIGQUIT) ---"
BACKTRACES_END = "--- Passenger: end of backtraces ---"


def dump_backtraces(signum: int, interrupted: FrameType | None) -> None:
    """On SIGQUIT (as Passenger's Ruby loader): every thread's stack to our output, which
    the helper agent logs and hands to `passenger-status --show=backtraces`. The main
    thread's stack is the one the signal interrupted: a request being served shows the
    app's frame it is in."""
    names = {t.ident: t.name for t in threading.enumerate()}
    me = threading.get_ident()
    lines = [BACKTRACES_BEGIN]
    for ident, top in sys._current_frames().items():
        frame = interrupted if ident == me else top
        lines.append(f"Thread {names.get(ident, '?')} ({ident}), most recent call last:")
        lines.extend("".join(traceback.format_stack(frame)).rstrip("\n").splitlines())
    lines.append(BACKTRACES_END)
    data = ("\n".join(lines) + "\n").encode("utf-8", "replace")
    while data:
        try:
            data = data[os.write(2, data):]
        except InterruptedError:
            continue
        except OSError:
            return


def run_worker(doc: dict[str, Any], app: Callable[..., Iterable[bytes]], proto: ModuleType,
               wsgi: ModuleType, lifeline: Lifeline, feedback_fd: int) -> None:
    """Listen on our socket, say we are ready, and serve until the lifeline closes."""
    signal.signal(signal.SIGQUIT, dump_backtraces)
    try:
        # Bound and listening already, by the helper agent, with its own mode and in its
        # own directory: whatever our umask, no one else can connect.
        listener = socket.socket(fileno=doc["listen_fd"])
    except OSError as exc:
        report_failure(proto, feedback_fd, exc)
    proto.report_ready(feedback_fd, pid=os.getpid())
    threaded = int(doc.get("concurrency", 1)) > 1
    base_environ = {
        "wsgi.version": (1, 0), "wsgi.errors": sys.stderr, "wsgi.multithread": threaded,
        "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.url_scheme": "http",
        "wsgi.file_wrapper": wsgi.FileWrapper, "SCRIPT_NAME": "",
        "SERVER_SOFTWARE": doc.get("server_software", "Passenger"),
    }
    handler = wsgi.RequestHandler(app, proto, base_environ, doc.get("app_root", os.getcwd()))

    def serve(conn: socket.socket) -> None:
        try:
            handler.serve_connection(conn, lifeline)
        except (wsgi.ChannelLost, OSError):
            pass  # the helper agent opens another connection when it needs one
        finally:
            conn.close()

    while True:
        conn, _ = listener.accept()
        if threaded:  # one persistent connection per thread (--thread-count of them)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()
        else:
            serve(conn)


def run_preloader(doc: dict[str, Any], app: Callable[..., Iterable[bytes]],
                  proto: ModuleType, wsgi: ModuleType, feedback_fd: int) -> None:
    """Smart spawning: the app is loaded once, here; each worker is forked from us, so the
    loaded code is shared copy-on-write. gc.freeze() keeps the garbage collector from
    writing to (and so un-sharing) those pages.

    Command (helper agent -> us, on the control socket): one JSON line with the worker's
    startup document, plus four fds (SCM_RIGHTS): its lifeline, its output pipe, its
    feedback pipe, its listening socket. Answer: one JSON line {"pid": N}. EOF on the
    control socket: we exit.
    """
    # Our own lifeline thread is one; any other thread was started by the app, and a
    # fork would silently lose it: the helper agent then spawns directly instead.
    extra_threads = threading.active_count() - 2
    unsafe = (f"the app started {extra_threads} thread(s) while loading, and forking "
              f"would lose them" if extra_threads > 0 else "")
    gc.collect()
    gc.freeze()
    proto.report_ready(feedback_fd, pid=os.getpid(), unsafe=unsafe)
    control = socket.socket(fileno=doc["control_fd"])
    while True:
        line = b""
        fds: list[int] = []
        while not line.endswith(b"\n"):
            data, new_fds, _flags, _addr = socket.recv_fds(control, 65536, 4)
            if not data:
                os._exit(0)  # the helper agent closed the control socket
            line += data
            fds += new_fds
        command = json.loads(line)
        pid = fork_worker(command, fds, app, proto, wsgi, control)
        control.sendall(proto.encode_document({"pid": pid}))


def fork_worker(doc: dict[str, Any], fds: list[int], app: Callable[..., Iterable[bytes]],
                proto: ModuleType, wsgi: ModuleType, control: socket.socket) -> int:
    """Double fork: the worker's parent exits at once, so the worker is adopted by the
    helper agent (a child subreaper), which can then wait for it like any child."""
    lifeline_fd, output_fd, feedback_fd, listen_fd = fds
    doc["listen_fd"] = listen_fd
    pid_r, pid_w = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            worker = os.fork()
            if worker == 0:
                os.close(pid_r)
                os.close(pid_w)
                control.close()
                become_worker(doc, lifeline_fd, output_fd, feedback_fd, app, proto, wsgi)
            os.write(pid_w, str(worker).encode())
        finally:
            os._exit(0)
    os.close(pid_w)
    pid = int(os.read(pid_r, 32) or b"0")
    os.close(pid_r)
    os.waitpid(middle, 0)
    for fd in fds:
        os.close(fd)
    return pid


def become_worker(doc: dict[str, Any], lifeline_fd: int, output_fd: int, feedback_fd: int,
                  app: Callable[..., Iterable[bytes]], proto: ModuleType,
                  wsgi: ModuleType) -> None:
    try:
        os.dup2(lifeline_fd, 0)
        os.dup2(output_fd, 1)
        os.dup2(output_fd, 2)
        os.close(lifeline_fd)
        os.close(output_fd)
        set_process_title(doc["title"])
        lifeline = Lifeline()
        lifeline.watch()
        run_worker(doc, app, proto, wsgi, lifeline, feedback_fd)
    finally:
        os._exit(1)


def main() -> None:
    # Run by the helper agent's bootstrap (see Spawner), which has read our startup
    # document from stdin already; run as a file (tests, by hand), we read it ourselves.
    doc = globals().get("STARTUP_DOCUMENT") or json.loads(sys.stdin.buffer.readline())
    feedback_fd: int = doc["feedback_fd"]
    set_process_title(doc["title"])
    lifeline = Lifeline()
    lifeline.watch()
    proto = load_protocol(doc)  # ours: it loads, or the helper agent sees us exit silently
    wsgi = load_handler(doc)  # before the app, so that a preloader's workers share it
    try:
        app = load_app(doc)
    except BaseException as exc:
        report_failure(proto, feedback_fd, exc)
    if doc.get("mode") == "preloader":
        run_preloader(doc, app, proto, wsgi, feedback_fd)
    else:
        run_worker(doc, app, proto, wsgi, lifeline, feedback_fd)


if __name__ == "__main__":
    main()
