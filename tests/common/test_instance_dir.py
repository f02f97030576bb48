"""Instance directories: a live one is listed, a stale one (lock free) is cleaned."""

from __future__ import annotations

import os
from pathlib import Path

from passenger.common.instance_dir import InstanceDir, OwnedInstanceDir, list_instances


def test_locked_instance_is_live_and_unlocked_one_is_stale(tmp_path: Path) -> None:
    live = OwnedInstanceDir.create(tmp_path, {"listen": "http://127.0.0.1:1/"})
    live.finalize()
    stale = OwnedInstanceDir.create(tmp_path, {})
    stale.finalize()
    os.close(stale.lock_fd)  # what a kill -9 of its watchdog does
    cleaned: list[InstanceDir] = []
    found = list_instances(tmp_path, report_stale=cleaned.append)
    assert [i.path for i in found] == [live.path]
    assert [i.path for i in cleaned] == [stale.path] and not stale.path.exists()
    assert live.properties()["listen"] == "http://127.0.0.1:1/"
    assert live.is_locked()
    live.close_and_remove()
    assert not live.path.exists()


def test_instance_being_created_is_left_alone(tmp_path: Path) -> None:
    young = OwnedInstanceDir.create(tmp_path, {})
    os.close(young.lock_fd)  # not finalized yet, lock free, but only just created
    assert list_instances(tmp_path, report_stale=lambda i: None) == []
    assert young.path.exists()


def test_instance_dir_is_not_writable_by_others(tmp_path: Path) -> None:
    inst = OwnedInstanceDir.create(tmp_path, {})
    for path in [inst.path, *inst.path.iterdir()]:
        assert not path.stat().st_mode & 0o022, path
    inst.close_and_remove()
