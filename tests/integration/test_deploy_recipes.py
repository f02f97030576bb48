"""docs/deploy.md's recipes, run as written with real nginx: the blocks are read from
the document and only addresses, ports and certificate paths are replaced (each
replacement must apply, so the document and this test cannot drift apart)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest
from webservers import NGINX, Nginx, TlsProxy, installed, running

from support import (
    INSTRUMENTED_APP,
    PassengerServer,
    RequestLoop,
    http_request,
    running_server,
    wait_for,
)

DOC = (Path(__file__).parents[2] / "docs" / "deploy.md").read_text()

pytestmark = pytest.mark.skipif(not installed(NGINX), reason="needs nginx (.ci/run "
                                                              "installs it)")


def recipe(name: str) -> str:
    match = re.search(rf"<!-- recipe: {name} -->\n```\w+\n(.*?)```", DOC, re.S)
    assert match, f"no recipe {name!r} in docs/deploy.md"
    return match.group(1)


def replaced(text: str, *pairs: tuple[str, str]) -> str:
    for old, new in pairs:
        assert old in text, f"{old!r} is no longer in the recipe"
        text = text.replace(old, new)
    return text


class RecipeNginx(Nginx):
    def __init__(self, block: str) -> None:
        super().__init__(workers=1)
        self.block = block

    def server_block(self) -> str:
        return self.block.replace("listen 80;", f"listen 127.0.0.1:{self.port};")


class RecipeTlsProxy(TlsProxy):
    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)

    def server_block(self) -> str:
        super().server_block()  # makes the self-signed certificate
        return replaced(recipe("nginx-tls"),
                        ("127.0.0.1:3000", f"127.0.0.1:{self.upstream_port}"),
                        ("listen 443 ssl;", f"listen 127.0.0.1:{self.port} ssl;"),
                        ("/etc/ssl/certs/example.com.pem", str(self.certificate)),
                        ("/etc/ssl/private/example.com.key", str(self.key)))


def test_nginx_tls_recipe_makes_the_app_see_https() -> None:
    with running_server(INSTRUMENTED_APP) as server, \
            running(RecipeTlsProxy(server.port)) as proxy:
        conn = proxy.client()  # type: ignore[attr-defined]
        conn.request("GET", "/env", headers={"Host": "example.com"})
        response = conn.getresponse()
        environ = json.loads(response.read())
        conn.close()
        assert response.status == 200
        assert environ["wsgi.url_scheme"] == "https"
        assert environ["HTTP_X_FORWARDED_PROTO"] == "https"
        assert environ["HTTP_HOST"] == "example.com"
        assert environ["REMOTE_ADDR"] == "127.0.0.1"  # nginx, trusted by default


def test_nginx_balance_recipe_survives_a_killed_instance() -> None:
    one = PassengerServer(INSTRUMENTED_APP, "--min-instances", "2")
    two = PassengerServer(INSTRUMENTED_APP, "--min-instances", "2")
    try:
        one.start()
        two.start()
        block = replaced(recipe("nginx-balance"),
                         ("10.0.0.11:3000", f"127.0.0.1:{one.port}"),
                         ("10.0.0.12:3000", f"127.0.0.1:{two.port}"))
        with running(RecipeNginx(block)) as nginx:
            pids = set()
            for _ in range(20):  # both take traffic
                status, _, body = _get(nginx.port)
                assert status == 200
                pids.add(body)
            assert len(pids) >= 3, pids  # processes of both instances answered
            with RequestLoop(nginx.port, limit=2000, pause=0.002) as loop:
                time.sleep(0.5)
                one.remember_descendants()
                os.kill(one.watchdog_pid, signal.SIGKILL)  # the whole instance goes
                wait_for(lambda: not _listening(one.port), 10, message="instance gone")
                time.sleep(1.0)
            statuses = [status for _, status, _ in loop.results]
            assert len(statuses) > 200
            assert set(statuses) == {200}, {s for s in statuses if s != 200}
            after = {_get(nginx.port)[2] for _ in range(5)}
            assert after <= {b"pid=%d\n" % p for p in two.app_pids()}
    finally:
        one.stop()
        two.stop()


def _get(port: int) -> tuple[int, dict[str, str], bytes]:
    return http_request(port, "/", headers={"Host": "example.com"}, timeout=10)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_kubernetes_manifest_probes_match_the_metrics_address() -> None:
    manifest = recipe("kubernetes")
    port = re.search(r'"--metrics-address", "0\.0\.0\.0:(\d+)"', manifest)
    assert port, "the container must serve the probes on the pod's address"
    assert f"httpGet: {{path: /readyz, port: {port.group(1)}}}" in manifest
    assert f"httpGet: {{path: /healthz, port: {port.group(1)}}}" in manifest
    grace = int(re.search(r"terminationGracePeriodSeconds: (\d+)", manifest).group(1))  # type: ignore[union-attr]
    assert grace > 30  # longer than --graceful-timeout's default


def test_the_doc_points_at_the_shipped_files() -> None:
    for path in ("deploy/passenger.service", "deploy/logrotate"):
        assert path in DOC
        assert (Path(__file__).parents[2] / path).is_file()
