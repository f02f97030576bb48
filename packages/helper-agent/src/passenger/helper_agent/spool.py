"""Bytes held for a peer that is not taking them yet: in memory up to a threshold, then
in a temporary file, as Passenger's core buffers bodies.

A request body waits here until the whole of it has arrived (so a slow upload never
holds an app process); a response waits here while its client reads slowly (so the app
process is free as soon as the app has finished). The file is created unlinked
(O_TMPFILE where the kernel has it, else unlinked at once) in the instance directory's
`buffers/`: nothing is left behind, whatever happens to the helper agent.
"""

from __future__ import annotations

import collections
import errno
import logging
import os

log = logging.getLogger(__name__)
MEMORY_THRESHOLD = 128 * 1024  # beyond this a spool moves to its file
READ_SIZE = 256 * 1024


class Spool:
    """FIFO of bytes. `append` never blocks on the peer; `read` gives back what was
    appended first. Memory use stays under the threshold, plus one read."""

    __slots__ = ("buffer_dir", "file", "file_read", "file_size", "memory", "memory_size",
                 "total")

    def __init__(self, buffer_dir: str) -> None:
        self.buffer_dir = buffer_dir
        self.memory: collections.deque[bytes] = collections.deque()
        self.memory_size = 0
        self.file: int = -1           # the spill file's descriptor, -1 while in memory
        self.file_read = 0            # offset of the first unread byte in the file
        self.file_size = 0
        self.total = 0                # bytes ever appended

    def __len__(self) -> int:
        """Bytes appended and not read yet."""
        return self.memory_size + self.file_size - self.file_read

    def append(self, data: bytes) -> None:
        self.total += len(data)
        if self.file < 0 and (self.memory_size + len(data) <= MEMORY_THRESHOLD
                              or not self._open_file()):
            self.memory.append(data)
            self.memory_size += len(data)
            return
        # Once spilling, everything goes to the file, after what is in memory: order holds.
        os.pwrite(self.file, data, self.file_size)
        self.file_size += len(data)

    def read(self, limit: int = READ_SIZE) -> bytes:
        """Up to `limit` bytes of what was appended first (b"" when empty)."""
        if self.memory:
            data = self.memory.popleft()
            if len(data) > limit:
                self.memory.appendleft(data[limit:])
                data = data[:limit]
            self.memory_size -= len(data)
            return data
        if self.file < 0 or self.file_read >= self.file_size:
            return b""
        data = os.pread(self.file, min(limit, self.file_size - self.file_read),
                        self.file_read)
        self.file_read += len(data)
        if self.file_read >= self.file_size:
            self._close_file()  # drained: back to memory, with an empty file
        return data

    def file_ahead(self) -> int:
        """Bytes that come next and are all in the file (0 while memory comes first):
        they can go to a socket with sendfile(2) from `file_read` on."""
        return 0 if self.memory or self.file < 0 else self.file_size - self.file_read

    def skip(self, count: int) -> None:
        """`count` bytes of `file_ahead` went out without `read`."""
        self.file_read += count
        if self.file_read >= self.file_size:
            self._close_file()

    def close(self) -> None:
        self.memory.clear()
        self.memory_size = 0
        self._close_file()

    def _open_file(self) -> bool:
        try:
            self.file = open_unlinked(self.buffer_dir)
        except OSError as exc:  # out of descriptors or disk: memory it is, and we say so
            log.warning("Cannot create a buffer file in %s (%s); holding %d bytes in "
                        "memory", self.buffer_dir, exc, self.memory_size)
            return False
        self.file_read = self.file_size = 0
        return True

    def _close_file(self) -> None:
        if self.file >= 0:
            os.close(self.file)
            self.file = -1
            self.file_read = self.file_size = 0


def open_unlinked(directory: str) -> int:
    """A read-write file in `directory` that has no name, so nothing outlives us."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except (AttributeError, IsADirectoryError, OSError) as exc:
        if getattr(exc, "errno", None) in (errno.EMFILE, errno.ENFILE, errno.ENOSPC):
            raise
    import tempfile  # rarely needed: imported then only

    fd, path = tempfile.mkstemp(dir=directory, prefix="body.")
    os.unlink(path)
    return fd
