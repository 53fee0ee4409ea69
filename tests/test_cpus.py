"""Core masks, SPDK's core lock files and the reactor report, on real threads and files."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from pybdev.cpus import CoreLocks, WorkerThread, format_cpumask, parse_cpumask, reactors
from pybdev.errors import OperationError


def test_masks() -> None:
    assert parse_cpumask("0x5") == {0, 2} and parse_cpumask("[0,2-3]") == {0, 2, 3}
    assert format_cpumask({0, 2}) == "5" and format_cpumask(set()) == "0"
    with pytest.raises(ValueError):
        parse_cpumask("0x0")


def test_core_locks_exclude_a_second_holder(tmp_path: Path) -> None:
    path = str(tmp_path / "lock_{:03d}")
    first = CoreLocks(frozenset({0, 1}), path)
    first.claim()
    first.claim()  # idempotent, as SPDK skips cores it holds
    # fcntl locks are per process: a second holder must be another process.
    pid = os.fork()
    if pid == 0:
        other = CoreLocks(frozenset({1}), path)
        try:
            other.claim()
            code = 0
        except OperationError as e:
            code = 10 + int(e.detail)
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 11  # refused, naming core 1
    # Read last: closing any descriptor of the file drops this process's fcntl locks on it.
    assert int.from_bytes(Path(path.format(1)).read_bytes(), "little") == os.getpid()
    first.release()
    assert not Path(path.format(0)).exists() and not Path(path.format(1)).exists()


def test_reactors_report_real_threads() -> None:
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="ublk0q0")
    t.start()
    try:
        assert t.native_id is not None
        out = reactors(frozenset({0}), threading.get_native_id(),
                       [WorkerThread("ublk0q0", t.native_id, 0)], "1")
    finally:
        stop.set()
        t.join()
    assert out["pid"] == os.getpid() and out["tick_rate"] == 1_000_000_000
    (reactor,) = out["reactors"]
    assert reactor["lcore"] == 0 and reactor["tid"] == threading.get_native_id()
    assert [(w["name"], w["id"]) for w in reactor["lw_threads"]] == [
        ("app_thread", 1), ("ublk0q0", 2)]
    assert reactor["busy"] > 0  # this test's thread has used CPU
    assert set(reactor) == {"lcore", "numa_id", "tid", "busy", "idle", "in_interrupt", "irq",
                            "sys", "usr", "lw_threads"}
