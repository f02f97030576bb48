"""passenger-status's views (--show=pool|json|requests|server|xml|backtraces),
`--instance`, `passenger-config api-call`, and instance directories of other software in
the registry: each against a real server."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import INSTRUMENTED_APP, PassengerServer, running_server, wait_for

# Output captured from real Passenger 6.0.17 (a copy of the team's shared reference)
REFERENCE = Path(__file__).parents[1] / "fixtures" / "passenger-6.0.17"


@pytest.fixture(scope="module")
def server() -> Iterator[PassengerServer]:
    """One process, so that a second request queues behind a sleeping one."""
    with running_server(INSTRUMENTED_APP, "--max-pool-size", "1") as server:
        yield server


def in_background(server: PassengerServer, path: str) -> threading.Thread:
    thread = threading.Thread(target=lambda: server.get(path, timeout=30), daemon=True)
    thread.start()
    return thread


def status(server: PassengerServer, *args: str) -> str:
    result = server.run_tool("passenger-status", *args, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_requests_shows_what_is_in_the_app_and_what_waits(server: PassengerServer) -> None:
    busy = in_background(server, "/sleep?s=2&first")
    wait_for(lambda: server.status()["groups"][0]["processes"][0]["sessions"] == 1, 5,
             message="the first request in the app")
    queued = in_background(server, "/sleep?s=0&second")
    time.sleep(0.3)
    text = status(server, "--show=requests")
    assert text.startswith("Version : ")
    found = json.loads(text.split("\n\n", 1)[1])
    pid = server.app_pids()[0]
    first = next(r for r in found if r["path"] == "/sleep?s=2&first")
    second = next(r for r in found if r["path"] == "/sleep?s=0&second")
    assert first["state"] == "in the app" and first["pid"] == pid
    assert first["method"] == "GET" and first["app"] == str(INSTRUMENTED_APP)
    assert second["state"] == "queued" and second["pid"] is None
    assert first["age"] > second["age"] > 0
    assert found[0] is not second  # oldest first
    busy.join(10)
    queued.join(10)
    assert json.loads(status(server, "--show=requests", "--no-header")) == []


def test_server_shows_the_server_as_a_whole(server: PassengerServer) -> None:
    before = json.loads(status(server, "--show=server", "--no-header"))
    for _ in range(3):
        assert server.get("/")[0] == 200
    after = json.loads(status(server, "--show=server", "--no-header"))
    assert after["total_requests_begun"] == before["total_requests_begun"] + 3
    assert after["total_clients_accepted"] >= before["total_clients_accepted"] + 3
    assert after["server_state"] == "ACTIVE" and after["pid"] == server.find_agent_pid(
        "PassengerHelperAgent")
    assert after["pool"]["process_count"] == 1
    assert status(server, "--show=server").startswith("Version : ")


def element_paths(root: ET.Element, prefix: str = "") -> list[str]:
    paths = []
    for child in root:
        path = f"{prefix}/{child.tag}"
        paths.append(path)
        paths.extend(element_paths(child, path))
    return paths


def test_xml_follows_passengers_layout(server: PassengerServer) -> None:
    text = status(server, "--show=xml")
    assert text.startswith('<?xml version="1.0" encoding="iso-8859-1"?>\n<info version="3">')
    ours = ET.fromstring(text.split("\n", 1)[1])
    reference_text = (REFERENCE / "passenger-status_show-xml.txt").read_text()
    reference = ET.fromstring(reference_text[reference_text.index("<info"):
                                             reference_text.index("</info>") + 7])
    # Every element we print is one Passenger prints, in Passenger's order.
    theirs = list(dict.fromkeys(element_paths(reference)))
    mine = list(dict.fromkeys(element_paths(ours)))
    assert set(mine) <= set(theirs), set(mine) - set(theirs)
    assert sorted(mine, key=theirs.index) == mine
    pool = server.status()
    process = ours.find("supergroups/supergroup/group/processes/process")
    assert process is not None
    assert int(process.findtext("pid", "0")) == pool["groups"][0]["processes"][0]["pid"]
    assert ours.findtext("process_count") == "1"
    assert ours.findtext("supergroups/supergroup/group/app_root") == str(INSTRUMENTED_APP)
    assert int(process.findtext("private_dirty", "0")) > 0
    assert process.findtext("enabled") == "ENABLED"


def test_backtraces_show_the_frame_a_busy_process_is_in(server: PassengerServer) -> None:
    busy = in_background(server, "/sleep?s=2")
    wait_for(lambda: server.status()["groups"][0]["processes"][0]["sessions"] == 1, 5,
             message="the request in the app")
    text = status(server, "--show=backtraces")
    pid = server.app_pids()[0]
    assert f"----------- Process {pid} ({INSTRUMENTED_APP}) -----------" in text
    assert "Thread MainThread" in text and "Thread lifeline" in text
    frames = text[text.index("Thread MainThread"):]
    assert 'passenger_wsgi.py", line' in frames and "in application" in frames
    assert "time.sleep(" in frames  # the very line the request is on
    busy.join(10)
    assert server.get("/sleep?s=0.1")[0] == 200  # the request was not disturbed
    log = server.log()
    assert "Passenger: backtraces of every thread" in log  # as Passenger, also in the log


def test_instance_option_and_api_call(server: PassengerServer) -> None:
    name = json.loads(server.run_tool("passenger-config", "list-instances", "--json").stdout
                      )[0]["name"]
    assert json.loads(status(server, "--instance", name, "--show=json"))["instance"] == name
    assert json.loads(status(server, name, "--show=json"))["instance"] == name
    wrong = server.run_tool("passenger-status", "--instance", "nosuchname")
    assert wrong.returncode == 1 and "no Passenger instance named 'nosuchname'" in wrong.stderr
    pool = server.run_tool("passenger-config", "api-call", "GET", "/pool.json")
    assert pool.returncode == 0 and json.loads(pool.stdout)["instance"] == name
    missing = server.run_tool("passenger-config", "api-call", "GET", "/nope.json")
    assert missing.returncode == 1 and "404" in missing.stderr
    detach = server.run_tool("passenger-config", "api-call", "POST",
                             "/pool/detach_process.json", "-d", '{"pid": 1}')
    assert detach.returncode == 1 and "no running app process with PID 1" in detach.stderr
    bad = server.run_tool("passenger-config", "api-call", "POST", "/pool.json", "-d", "{x")
    assert bad.returncode == 2 and "-d: not JSON" in bad.stderr


def plant_real_passenger(registry: Path, name: str) -> tuple[Path, int]:
    """What Phusion Passenger 6 leaves in the shared registry, its lock held."""
    inst = registry / f"passenger.{name}"
    inst.mkdir(mode=0o755)
    (inst / "agents.s").mkdir()
    (inst / "properties.json").write_text(json.dumps({
        "instance_id": name, "passenger_version": "6.0.17", "watchdog_pid": 1,
        "server_software": "Phusion_Passenger/6.0.17", "integration_mode": "standalone"}))
    (inst / "creation_finalized").write_text("")
    lock = os.open(inst / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX)
    return inst, lock


def test_instances_of_real_passenger_are_skipped_not_counted(server: PassengerServer) -> None:
    live, lock = plant_real_passenger(server.registry, "kaZSyjI")
    stale, stale_lock = plant_real_passenger(server.registry, "stALEdir")
    os.close(stale_lock)  # its lock free: Passenger's own tools would clean it, not ours
    try:
        text = status(server)  # one instance of ours: no "multiple instances" refusal
        assert "Application groups" in text and "Phusion" not in text
        listed = server.run_tool("passenger-config", "list-instances", "-v")
        assert listed.returncode == 0
        lines = listed.stdout.splitlines()
        reference = (REFERENCE / "passenger-config_list-instances.txt").read_text()
        assert lines[0] == reference.splitlines()[1]  # Passenger's header layout
        assert len(lines) == 3 and "Phusion" not in listed.stdout
        for inst in (live, stale):
            assert f"(skipped {inst}: it is foreign: an instance of Phusion_Passenger/6.0.17)" \
                in listed.stderr
        assert stale.exists() and live.exists()
    finally:
        os.close(lock)


def test_two_of_ours_ask_which_in_passengers_layout() -> None:
    with running_server(INSTRUMENTED_APP) as one:
        two = PassengerServer(INSTRUMENTED_APP, env={
            "PASSENGER_INSTANCE_REGISTRY_DIR": str(one.registry)})
        try:
            two.start(wait_ready=False)  # its instance is in one's registry, not its own
            wait_for(lambda: len(list(one.registry.glob("passenger.*/creation_finalized")))
                     == 2, 20, message="both instances ready")
            result = one.run_tool("passenger-status")
            assert result.returncode == 1
            assert "It appears that multiple Passenger instances are running." in result.stderr
            assert "Name                       PID      Description" in result.stderr
        finally:
            two.stop()
