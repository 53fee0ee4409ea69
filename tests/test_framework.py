"""Framework methods SPDK's scripts call first, against a real target and both clients."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Target


def test_subsystems_in_spdks_order(target: Target) -> None:
    listing = json.loads(target.spdk("framework_get_subsystems").stdout)
    assert listing == [
        {"subsystem": "iobuf", "depends_on": []},
        {"subsystem": "accel", "depends_on": ["iobuf"]},
        {"subsystem": "bdev", "depends_on": ["accel", "iobuf"]},
        {"subsystem": "scheduler", "depends_on": []},
        {"subsystem": "nbd", "depends_on": ["bdev"]},
        {"subsystem": "ublk", "depends_on": ["bdev", "iobuf"]},
        {"subsystem": "nvmf", "depends_on": ["bdev"]},
    ]
    saved = json.loads(target.spdk("save_config").stdout)
    assert [s["subsystem"] for s in saved["subsystems"]] == [e["subsystem"] for e in listing]
    # save_config -s bdev takes bdev's dependencies along, as SPDK's rpc.py does.
    only = json.loads(target.cli("save_config", "-s", "bdev").stdout)
    assert [s["subsystem"] for s in only["subsystems"]] == ["iobuf", "accel", "bdev"]


def test_save_relaunch_save_round_trip(start_target: Callable[..., Target],
                                       tmp_path: Path) -> None:
    """json_config.sh: save -> relaunch with --json -> save, equal."""
    first = start_target("--wait-for-rpc")
    first.spdk("iobuf_set_options", "--small-pool-count", "4096")
    first.spdk("accel_assign_opc", "-o", "copy", "-m", "software")
    first.spdk("framework_start_init")
    first.spdk("bdev_malloc_create", "8", "512", "-b", "M0")
    first.spdk("bdev_null_create", "N0", "8", "512")
    saved = first.spdk("save_config").stdout
    path = tmp_path / "conf.json"
    path.write_text(saved)
    second = start_target("--json", str(path))
    assert second.spdk("save_config").stdout == saved
    third = start_target()
    third.cli("load_config", "-j", str(path))
    # load_config runs after init: STARTUP-only entries are skipped, as SPDK's rpc.py does.
    assert [b["name"] for b in third.rpc("bdev_get_bdevs")] == ["M0", "N0"]


def test_scheduler_period_is_not_replayed_as_in_spdk(start_target: Callable[..., Target],
                                                    tmp_path: Path) -> None:
    """SPDK's static scheduler resets the period when it is first selected, so a replayed
    ``framework_set_scheduler`` loses it (json_config.sh's config_filter.py drops the
    method before comparing for that reason)."""
    first = start_target()
    first.spdk("framework_set_scheduler", "static", "-p", "2000")
    saved = json.loads(first.spdk("save_config").stdout)
    sched = next(s for s in saved["subsystems"] if s["subsystem"] == "scheduler")
    assert sched["config"][0]["params"] == {"name": "static", "period": 2000}
    path = tmp_path / "conf.json"
    path.write_text(json.dumps(saved))
    second = start_target("--json", str(path))
    assert second.rpc("framework_get_scheduler")["scheduler_period"] == 0


def test_get_reactors(target: Target) -> None:
    out = json.loads(target.spdk("framework_get_reactors").stdout)
    assert out["pid"] == target.proc.pid
    (reactor,) = out["reactors"]
    assert reactor["lcore"] == 0 and reactor["in_interrupt"] is True
    assert reactor["lw_threads"][0]["name"] == "app_thread"
    assert os.path.exists(f"/proc/{target.proc.pid}/task/{reactor['tid']}")
    assert target.rpc_error("framework_get_reactors", {"a": 1}) == {
        "code": -32602, "message": "`framework_get_reactors` requires no arguments"}


def test_cpumask_locks_between_two_targets(start_target: Callable[..., Target]) -> None:
    a = start_target("-m", "0x1")
    b = start_target("-m", "0x1")
    lock = Path("/var/tmp/spdk_cpu_lock_000")
    try:
        a.spdk("framework_enable_cpumask_locks")
        assert lock.exists()
        assert b.rpc_error("framework_enable_cpumask_locks") == {
            "code": -32603, "message": "Failed to claim CPU core: 0"}
        a.spdk("framework_disable_cpumask_locks")
        assert not lock.exists()
        b.spdk("framework_enable_cpumask_locks")
        b.stop()  # the lock goes with the target
        assert not lock.exists()
    finally:
        for t in (a, b):
            if t.proc.poll() is None:
                t.rpc("framework_disable_cpumask_locks")
    assert a.rpc_error("framework_disable_cpumask_locks", {"x": 1})["code"] == -32602
