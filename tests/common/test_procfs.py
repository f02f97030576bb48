"""ProcFS on fixture trees (tests/fixtures/procfs/, made by make_trees.py there): the
parsing rules, the missing/unreadable/vanished cases, and the API the agents use. The
process table the CLI reads with psutil is tested in tests/cli/test_processes.py."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from passenger.common.procfs import CLOCK_TICKS, MemoryUsage, ProcessGone, ProcFS
from support import as_nobody

MIXED = Path(__file__).parents[1] / "fixtures" / "procfs" / "mixed"


@pytest.fixture
def procfs() -> ProcFS:
    return ProcFS(MIXED)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A private copy of the mixed tree, for tests that damage it."""
    shutil.copytree(MIXED, tmp_path / "proc")
    return tmp_path / "proc"


def test_stat_comm_with_spaces_and_parentheses_ends_at_last_paren(procfs: ProcFS) -> None:
    st = procfs.stat(303)
    assert st.comm == "x) (y z"
    assert (st.state, st.ppid, st.utime_ticks, st.stime_ticks) == ("S", 301, 12, 7)
    assert st.vsize_bytes == 10240 * 1024


def test_memory_from_status_and_smaps_rollup(procfs: ProcFS) -> None:
    usage = procfs.memory(304)
    assert usage.vm_size_kb == 10240
    assert usage.threads == 1
    assert usage.smaps_kb("Private_Dirty") == 512
    assert usage.smaps_kb("Pss") == 3500
    assert usage.smaps_kb("Shared_Clean", "Shared_Dirty") == 4096 + 6144


def test_smaps_rollup_missing_falls_back_to_summing_smaps(procfs: ProcFS) -> None:
    assert not (MIXED / "305" / "smaps_rollup").exists()
    usage = procfs.memory(305)
    assert usage.smaps_kb("Private_Dirty") == 3001  # over three mappings: 1001 + 1000 + 1000
    assert usage.smaps_kb("Pss") == 3100


def test_zombie_has_no_vm_size_but_is_not_unknown(procfs: ProcFS) -> None:
    usage = procfs.memory(600)
    assert usage.vm_size_kb == 0
    assert usage.smaps == {}
    assert usage.smaps_kb("Private_Dirty") == 0


def test_vanished_process_raises_process_gone(tree: Path) -> None:
    procfs = ProcFS(tree)
    shutil.rmtree(tree / "304")
    for read in (procfs.stat, procfs.memory, procfs.smaps_totals):
        with pytest.raises(ProcessGone):
            read(304)


def test_process_gone_between_status_and_smaps(tree: Path) -> None:
    """The directory is there but its smaps files are not: the kernel tore it down."""
    (tree / "301" / "smaps_rollup").unlink()
    (tree / "301" / "smaps").unlink()
    with pytest.raises(ProcessGone):
        ProcFS(tree).memory(301)


def test_unreadable_files_give_none(tree: Path) -> None:
    # A directory where a file should be cannot be read either: EISDIR, like EACCES,
    # means "unknown", not "gone". (Real EACCES is tested in tests/cli as nobody.)
    (tree / "100" / "smaps_rollup").unlink()
    (tree / "100" / "smaps_rollup").mkdir()
    assert ProcFS(tree).smaps_totals(100) is None
    assert ProcFS(tree).memory(100).smaps_kb("Private_Dirty") is None


@pytest.fixture
def shared_tree() -> Iterator[Path]:
    """A copy that nobody can traverse (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="pfs.", dir="/tmp"))
    try:
        shutil.copytree(MIXED, base / "proc")
        for d in [base, *(p for p in (base / "proc").rglob("*") if p.is_dir())]:
            d.chmod(0o755)
        yield base / "proc"
    finally:
        shutil.rmtree(base)


def test_permission_denied_gives_none(shared_tree: Path) -> None:
    (shared_tree / "100" / "smaps_rollup").chmod(0)
    (shared_tree / "100" / "status").chmod(0)
    (shared_tree / "101" / "smaps_rollup").chmod(0)
    (shared_tree / "101" / "smaps").chmod(0)
    procfs = ProcFS(shared_tree)
    result = as_nobody(lambda: repr((procfs.memory(100), procfs.memory(101).smaps,
                                     procfs.memory(200).smaps_kb("Private_Dirty"))))
    assert result == repr((MemoryUsage(vm_size_kb=None, threads=None, smaps=None), None, 205))


def test_agent_api_status_kb_cpu_and_real_memory(procfs: ProcFS) -> None:
    assert procfs.status_kb(301, "VmSize") == 10240
    assert procfs.status_kb(301, "NoSuchKey") is None
    assert procfs.real_memory_kb(301) == 4096
    assert procfs.uptime() == 12345.67
    lifetime = 12345.67 - 4321 / CLOCK_TICKS
    assert procfs.cpu_percent(301) == pytest.approx(100 * 19 / CLOCK_TICKS / lifetime)


def test_real_proc_reads_this_process() -> None:
    procfs = ProcFS()
    assert procfs.stat(os.getpid()).ppid == os.getppid()
    usage = procfs.memory(os.getpid())
    assert usage.vm_size_kb and usage.vm_size_kb > 0
    assert usage.smaps_kb("Private_Dirty") and usage.threads
