"""Instance directories: a live one is listed, a stale one (lock free) is cleaned."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from passenger.common.instance_dir import (
    InstanceDir,
    OwnedInstanceDir,
    list_instances,
    registry_dir,
)
from passenger.common.owned_instance_dir import NAME_ALPHABET, random_text


def test_locked_instance_is_live_and_unlocked_one_is_stale(tmp_path: Path) -> None:
    live = OwnedInstanceDir.create(tmp_path, {"listen": "http://127.0.0.1:1/"})
    live.finalize()
    stale = OwnedInstanceDir.create(tmp_path, {})
    stale.finalize()
    os.close(stale.lock_fd)  # what a kill -9 of its watchdog does
    cleaned: list[InstanceDir] = []
    found = list_instances(tmp_path, report_stale=cleaned.append)
    assert [i.path for i in found] == [Path(live.path)]
    assert [i.path for i in cleaned] == [Path(stale.path)] and not Path(stale.path).exists()
    assert found[0].properties()["listen"] == "http://127.0.0.1:1/"
    assert found[0].name == live.name
    assert found[0].is_locked()
    live.close_and_remove()
    assert not Path(live.path).exists()


def test_instance_being_created_is_left_alone(tmp_path: Path) -> None:
    young = OwnedInstanceDir.create(tmp_path, {})
    os.close(young.lock_fd)  # not finalized yet, lock free, but only just created
    assert list_instances(tmp_path, report_stale=lambda i: None) == []
    assert Path(young.path).exists()


def test_instance_dir_is_not_writable_by_others(tmp_path: Path) -> None:
    inst = OwnedInstanceDir.create(tmp_path, {})
    for path in [Path(inst.path), *Path(inst.path).iterdir()]:
        assert not path.stat().st_mode & 0o022, path
    assert oct(Path(inst.path).stat().st_mode & 0o777) == "0o750"
    inst.close_and_remove()


def test_instance_names_are_random_and_unbiased() -> None:
    names = {random_text(8, NAME_ALPHABET) for _ in range(200)}
    assert len(names) == 200 and all(len(n) == 8 for n in names)
    assert set("".join(names)) <= set(NAME_ALPHABET)


def test_registry_defaults_to_the_temp_dir_as_tempfile_finds_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PASSENGER_INSTANCE_REGISTRY_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert registry_dir() == tmp_path
    assert registry_dir("/srv/registry") == Path("/srv/registry")
    monkeypatch.setenv("PASSENGER_INSTANCE_REGISTRY_DIR", "/run/passenger")
    assert registry_dir() == Path("/run/passenger")
