"""The apps under test, copied into the run's temp dir (nothing is written into the repo)
with whatever data they need built beside them.

- hello: examples/hello as it is;
- django: benchmarks/apps/django_bench plus its sqlite database (table `item`, 100 rows;
  a request reads 20 of them);
- bigbody: benchmarks/apps/bigbody plus a 100 MiB `data/file.bin` (for file_wrapper) and
  a 100 MiB `public/static.bin` (served by ours and Passenger without the app).
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCES = {
    "hello": REPO / "examples" / "hello",
    "django": REPO / "benchmarks" / "apps" / "django_bench",
    "bigbody": REPO / "benchmarks" / "apps" / "bigbody",
}
DJANGO_ROWS = 100
BIG_FILE_BYTES = 100 * 1024 * 1024
BYTES_BODY = 32 * 1024 * 1024       # what /bytes of the bigbody app answers
FILE_PATH = "data/file.bin"
STATIC_PATH = "public/static.bin"


@dataclass(frozen=True)
class App:
    name: str
    dir: Path

    @property
    def source(self) -> str:
        return str(SOURCES[self.name].relative_to(REPO))


def prepare(name: str, workdir: Path) -> App:
    """Copy app `name` into workdir/apps/NAME and build its data; -> the copy."""
    target = workdir / "apps" / name
    target.mkdir(parents=True)
    shutil.copy(SOURCES[name] / "passenger_wsgi.py", target / "passenger_wsgi.py")
    if name == "django":
        build_django_db(target / "bench.sqlite3")
    elif name == "bigbody":
        write_big_file(target / FILE_PATH, BIG_FILE_BYTES)
        write_big_file(target / STATIC_PATH, BIG_FILE_BYTES)
    return App(name, target)


def build_django_db(path: Path, rows: int = DJANGO_ROWS) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                   "price REAL NOT NULL, description TEXT NOT NULL)")
        db.executemany(
            "INSERT INTO item (id, name, price, description) VALUES (?, ?, ?, ?)",
            [(i, f"item number {i}", i * 1.25,
              f"The {i}th thing on the list, described in a few more words than needed "
              "so that the template has something to cut.") for i in range(1, rows + 1)])
    db.close()
    path.chmod(0o644)


def write_big_file(path: Path, size: int) -> None:
    """`size` bytes of a repeating non-zero pattern (real pages, not a sparse hole),
    readable by others, as static serving requires."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = bytes(range(256)) * 4096     # 1 MiB
    with open(path, "wb") as f:
        written = 0
        while written < size:
            chunk = block[: size - written]
            f.write(chunk)
            written += len(chunk)
    path.chmod(0o644)
