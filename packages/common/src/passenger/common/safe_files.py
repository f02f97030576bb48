"""Opening files where another user has a say: log files and PID files in an app dir,
whose owner can plant symbolic links there for root to follow.

Run as root, such a file is opened by a child process that has become the user who
controls the place (the owner of the deepest directory on the way that root does not
own): root then writes only where that user could write anyway. In a place only root
controls, the file is opened by root, never through a symbolic link. A path through a
directory that others may write to and that is not sticky is refused.

The watchdog and the logging agent use this module: it imports what only the switch to
another user needs (socket, json) when it is made.
"""

from __future__ import annotations

import errno
import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

LOG_FILE_MODE = 0o640
PID_FILE_MODE = 0o644  # read by `passenger stop` run as the app's owner too


class UnsafeFile(OSError):
    """The message is one line for the user."""


def controlling_user(path: str) -> tuple[int, int] | None:
    """(uid, gid) of the user who controls the deepest directory on the way to `path`
    (or a symbolic link on the way), None if only root does. Raises UnsafeFile for a
    directory anyone may write to without the sticky bit."""
    found: tuple[int, int] | None = None
    current = "/"
    for part in os.path.abspath(os.path.dirname(path)).split("/")[1:]:
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            break  # created later, by whoever controls its parent
        if st.st_uid != 0:
            found = (st.st_uid, st.st_gid)
        if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o002 and not st.st_mode & stat.S_ISVTX:
            raise UnsafeFile(errno.EPERM, f"{current} is writable by everyone and not "
                                          f"sticky: no file of ours goes below it", path)
        if stat.S_ISLNK(st.st_mode):
            current = os.path.realpath(current)
    return found


def open_file(path: str, flags: int, mode: int = LOG_FILE_MODE) -> int:
    """os.open, made safe for root: never through a symbolic link in the last step, and
    as the controlling user where one is (see module doc)."""
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    if os.geteuid() != 0:
        return _opened(os.open(path, flags, mode))
    user = controlling_user(path)
    if user is None:
        return _opened(os.open(path, flags, mode))
    return as_user(user, lambda: _opened(os.open(path, flags, mode)), path)


def _opened(fd: int) -> int:
    """Only a regular file will do (not a FIFO that blocks us, not a device)."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeFile(errno.EINVAL, "not a regular file")
    os.set_blocking(fd, True)
    return fd


def write_atomically(path: str, text: str, mode: int = PID_FILE_MODE) -> None:
    """A new file with `text` replaces `path` (never through a symbolic link)."""

    def write() -> None:
        tmp = os.path.join(os.path.dirname(path) or ".",
                           f".{os.path.basename(path)}.{os.urandom(6).hex()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)  # replaces a link itself, never what it points to
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    _in_place(path, write)


def remove(path: str) -> None:
    def unlink() -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    _in_place(path, unlink)


def open_regular(path: str, follow_links: bool = False) -> int:
    """Read-only and never blocking, and only a regular file: a FIFO or a device planted
    where we read must not hang or flood us. Not through a link unless `follow_links`."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeFile(errno.EINVAL, "not a regular file", path)
    return fd


def read_regular(path: str, limit: int, follow_links: bool = False) -> bytes:
    """A regular file's bytes; ValueError if it holds more than `limit`."""
    fd = open_regular(path, follow_links)
    try:
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data


def read_small(path: str, limit: int = 4096) -> str | None:
    """A small regular file's text (None if absent), never through a link."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        return None
    try:
        return os.read(fd, limit).decode(errors="replace")
    finally:
        os.close(fd)


def _in_place(path: str, action: Callable[[], None]) -> None:
    user = controlling_user(path) if os.geteuid() == 0 else None
    if user is None:
        action()
        return

    def run() -> int:
        action()
        return -1

    as_user(user, run, path)


def as_user(user: tuple[int, int], action: Callable[[], int], path: str) -> int:
    """Run `action` in a child that has become `user` (uid, gid, no other groups);
    -> the descriptor it returns (passed back), or -1. Its OSError is raised here."""
    import json
    import socket

    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            ours.close()
            os.setgroups([])
            os.setresgid(user[1], user[1], user[1])
            os.setresuid(user[0], user[0], user[0])
            fd = action()
            if fd >= 0:
                socket.send_fds(theirs, [b"{}"], [fd])
            else:
                theirs.sendall(b"{}")
        except OSError as exc:
            try:
                theirs.sendall(json.dumps({"errno": exc.errno or errno.EIO,
                                           "error": exc.strerror or str(exc)}).encode())
            except OSError:
                pass
        finally:
            os._exit(0)
    theirs.close()
    try:
        message, fds, _, _ = socket.recv_fds(ours, 4096, 1)
    finally:
        ours.close()
        os.waitpid(pid, 0)
    report = json.loads(message or b'{"errno": 5, "error": "the helper process died"}')
    if "errno" in report:
        raise OSError(report["errno"], f"{report['error']} (as user {user[0]})", path)
    return fds[0] if fds else -1
