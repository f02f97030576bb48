"""Files under APP_DIR/public, served by the helper agent without the app: validators,
ranges, precompressed siblings, sendfile, and nothing outside public/."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import INSTRUMENTED_APP, PassengerServer, running_server, syscall_results

CSS = b"body { color: #123456; }\n" * 40


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("static") / "app"
    root.mkdir()
    shutil.copy(INSTRUMENTED_APP / "passenger_wsgi.py", root)
    public = root / "public"
    (public / "css").mkdir(parents=True)
    (public / "css" / "site.css").write_bytes(CSS)
    (public / "css" / "site.css.gz").write_bytes(gzip.compress(CSS))
    (public / "plain.txt").write_text("no sibling\n")
    (public / "big.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    (public / ".env").write_text("SECRET=1\n")
    (public / ".git").mkdir()
    (public / ".git" / "config").write_text("[core]\n")
    (public / "dir").mkdir()
    (public / "inside.css").symlink_to("css/site.css")
    (public / "outside.py").symlink_to(root / "passenger_wsgi.py")
    (public / "etc").symlink_to("/etc")
    (root / "private.txt").write_text("not public\n")
    for path in public.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    return root


@pytest.fixture(scope="module")
def server(app: Path) -> Iterator[PassengerServer]:
    with running_server(app) as server:
        yield server


def processed(server: PassengerServer) -> int:
    return sum(p["processed"] for g in server.status()["groups"] for p in g["processes"])


def get(server: PassengerServer, path: str, **headers: str) -> tuple[int, dict[str, str],
                                                                     bytes]:
    return server.get(path, headers=headers)


def test_a_file_is_served_without_the_app(server: PassengerServer) -> None:
    before = processed(server)
    status, headers, body = get(server, "/css/site.css")
    assert status == 200 and body == CSS
    assert headers["content-type"] == "text/css; charset=utf-8"
    assert headers["content-length"] == str(len(CSS))
    assert headers["accept-ranges"] == "bytes"
    assert headers["etag"].startswith('"') and "last-modified" in headers
    assert headers["vary"] == "Accept-Encoding"  # a .gz sibling exists
    status, headers, body = server.get("/css/site.css", method="HEAD")
    assert status == 200 and body == b"" and headers["content-length"] == str(len(CSS))
    assert get(server, "/plain.txt")[2] == b"no sibling\n"
    assert "vary" not in get(server, "/plain.txt")[1]
    assert processed(server) == before  # the app saw none of it


def test_validators_give_304(server: PassengerServer) -> None:
    _, headers, _ = get(server, "/css/site.css")
    etag, modified = headers["etag"], headers["last-modified"]
    status, headers304, body = get(server, "/css/site.css", **{"If-None-Match": etag})
    assert status == 304 and body == b"" and headers304["etag"] == etag
    assert get(server, "/css/site.css", **{"If-None-Match": f'"x", W/{etag}'})[0] == 304
    assert get(server, "/css/site.css", **{"If-None-Match": '"other"'})[0] == 200
    assert get(server, "/css/site.css", **{"If-Modified-Since": modified})[0] == 304
    assert get(server, "/css/site.css", **{
        "If-Modified-Since": "Sun, 06 Nov 1994 08:49:37 GMT"})[0] == 200
    # If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2)
    assert get(server, "/css/site.css", **{"If-None-Match": '"other"',
                                           "If-Modified-Since": modified})[0] == 200


def test_ranges(server: PassengerServer) -> None:
    size = len(CSS)
    status, headers, body = get(server, "/css/site.css", Range="bytes=0-3")
    assert (status, body) == (206, CSS[:4])
    assert headers["content-range"] == f"bytes 0-3/{size}"
    assert get(server, "/css/site.css", Range="bytes=-5")[2] == CSS[-5:]
    assert get(server, "/css/site.css", Range="bytes=10-")[2] == CSS[10:]
    assert get(server, "/css/site.css", Range=f"bytes=5-{size * 9}")[2] == CSS[5:]
    status, headers, body = get(server, "/css/site.css", Range=f"bytes={size}-")
    assert status == 416 and headers["content-range"] == f"bytes */{size}"
    assert get(server, "/css/site.css", Range="bytes=0-1,5-6")[0] == 200  # several: all
    assert get(server, "/css/site.css", Range="pages=1-2")[0] == 200
    etag = get(server, "/css/site.css")[1]["etag"]
    assert get(server, "/css/site.css", Range="bytes=0-3", **{"If-Range": etag})[0] == 206
    assert get(server, "/css/site.css", Range="bytes=0-3", **{"If-Range": '"old"'})[0] == 200


def test_precompressed_sibling(server: PassengerServer) -> None:
    status, headers, body = get(server, "/css/site.css", **{"Accept-Encoding": "br, gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert gzip.decompress(body) == CSS
    assert headers["content-type"] == "text/css; charset=utf-8"
    plain_etag = get(server, "/css/site.css")[1]["etag"]
    assert headers["etag"] != plain_etag  # two representations, two validators
    _, headers, body = get(server, "/css/site.css", **{"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in headers and body == CSS
    _, headers, body = get(server, "/css/site.css", **{"Accept-Encoding": "*"})
    assert headers["content-encoding"] == "gzip"


def test_nothing_outside_public_and_no_dotfiles(server: PassengerServer) -> None:
    for path in ("/.env", "/.git/config", "/outside.py", "/etc/passwd", "/etc/hostname",
                 "/%2e%2e/private.txt", "/css/%2e%2e/%2e%2e/private.txt",
                 "/css/..%2fsite.css"):
        status, _, body = get(server, path)
        assert status == 404, path
        assert b"SECRET" not in body and b"root:" not in body
    assert get(server, "/inside.css")[2] == CSS  # a link that stays inside is fine


def test_what_is_not_a_file_goes_to_the_app(server: PassengerServer) -> None:
    before = processed(server)
    assert get(server, "/css/missing.css")[2].startswith(b"pid=")  # the app's answer
    assert get(server, "/dir")[2].startswith(b"pid=")
    assert get(server, "/dir/")[2].startswith(b"pid=")
    assert server.get("/css/site.css", method="POST", body=b"x=1")[2].startswith(b"pid=")
    assert processed(server) == before + 4


def test_a_big_file_goes_out_intact_to_fast_and_slow_readers(
        server: PassengerServer, app: Path) -> None:
    expected = hashlib.sha256((app / "public" / "big.bin").read_bytes()).hexdigest()
    assert hashlib.sha256(get(server, "/big.bin")[2]).hexdigest() == expected
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\nGET /plain.txt HTTP/1.1\r\n"
                     b"Host: x\r\n\r\n")
        data = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not data.endswith(b"no sibling\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            time.sleep(0.001)  # a slow reader: the server must wait, not buffer
    _, rest = data.split(b"\r\n\r\n", 1)
    body = rest[:8 * 1024 * 1024]
    assert hashlib.sha256(body).hexdigest() == expected
    assert rest[len(body):].startswith(b"HTTP/1.1 200 OK")  # the pipelined one, after
    assert rest.endswith(b"no sibling\n")


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_files_go_out_with_sendfile(server: PassengerServer, tmp_path: Path) -> None:
    helper = server.agent_pid("PassengerHelperAgent")
    with syscall_results(helper, "sendfile", tmp_path / "trace") as sent:
        assert len(get(server, "/big.bin")[2]) == 8 * 1024 * 1024
    assert sent and sum(sent) > 4 * 1024 * 1024, sent[:5]


def test_no_static_files_option(app: Path) -> None:
    with running_server(app, "--no-static-files") as server:
        assert get(server, "/css/site.css")[2].startswith(b"pid=")


def test_django_admin_css_without_whitenoise(tmp_path: Path) -> None:
    """STATIC_ROOT=public/static: collectstatic there, and the CSS is served with
    DEBUG off, which Django itself never does."""
    app = tmp_path / "site"
    app.mkdir()
    (app / "passenger_wsgi.py").write_text(DJANGO_SITE)
    collected = subprocess.run([sys.executable, "-c", "import passenger_wsgi; "
                                "from django.core.management import call_command; "
                                "call_command('collectstatic', interactive=False, "
                                "verbosity=0)"],
                               cwd=app, capture_output=True, text=True, timeout=120,
                               check=False)
    assert collected.returncode == 0, collected.stderr
    css = app / "public" / "static" / "admin" / "css" / "base.css"
    assert css.is_file()
    with running_server(app) as server:
        status, headers, body = server.get("/static/admin/css/base.css")
        assert status == 200 and body == css.read_bytes()
        assert headers["content-type"].startswith("text/css")
        assert server.get("/static/admin/css/nope.css")[0] == 404  # Django's own 404


DJANGO_SITE = '''
import os
from django.conf import settings

HERE = os.path.dirname(os.path.abspath(__file__))
settings.configure(
    DEBUG=False, SECRET_KEY="for-the-tests-only-" + "k" * 40, ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["django.contrib.admin", "django.contrib.auth",
                    "django.contrib.contenttypes", "django.contrib.sessions",
                    "django.contrib.messages", "django.contrib.staticfiles"],
    STATIC_URL="/static/", STATIC_ROOT=os.path.join(HERE, "public", "static"),
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
)
import django
django.setup()
from django.core.wsgi import get_wsgi_application
urlpatterns = []
application = get_wsgi_application()
'''
