"""The lvol module through a real target: SPDK's test/lvol cases with SPDK's own ``spdk-rpc``.

The cases mirror ``test/lvol/{basic,thin_provisioning,snapshot_clone,resize,tasting,rename,
hotremove}.sh`` (docs/lvol-format.md lists what is left out). As ``common.sh`` does, the base
is a 128 MiB malloc with 512 B blocks (124 MiB usable with 4 MiB clusters) and every case
must leave no bdev and no lvstore behind. Data goes through NBD exports with qemu-io.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pybdev.rpc.client import JsonRpcException
from tests.conftest import Target, wait_until

MiB = 1 << 20
MALLOC_SIZE_MB = 128
MALLOC_BS = 512
LVS_DEFAULT_CLUSTER_SIZE = 4 * MiB
LVS_USABLE_MB = 124

needs_qemu_io = pytest.mark.skipif(shutil.which("qemu-io") is None, reason="needs qemu-io")


def sp(t: Target, *args: str) -> Any:
    """Run SPDK's rpc.py; its output parsed as JSON (a bare string for UUIDs, None if empty)."""
    out = t.spdk(*args).stdout.strip()
    if not out:
        return None
    try:
        return json.loads(out)
    except ValueError:
        return out


def sp_fails(t: Target, *args: str) -> str:
    res = t.spdk(*args, check=False)
    assert res.returncode != 0, f"{args} succeeded: {res.stdout}"
    return res.stdout + res.stderr


def lvol_bdevs(t: Target) -> list[dict[str, Any]]:
    return [b for b in t.rpc("bdev_get_bdevs") if b["product_name"] == "Logical Volume"]


@pytest.fixture(scope="module")
def lvt() -> Iterator[Target]:
    path = Path(tempfile.mkdtemp(prefix="pbl-", dir="/tmp"))
    t = Target(path / "spdk.sock", [], path / "target.log")
    try:
        yield t.wait_ready()
        assert "Traceback" not in t.log(), t.log()
    finally:
        code = t.stop()
        log = t.log()
        shutil.rmtree(path, ignore_errors=True)
    assert code == 0, log


@pytest.fixture
def t(lvt: Target) -> Iterator[Target]:
    yield lvt
    # common.sh: check_leftover_devices; cleaned up anyway so one failure stays one
    leftovers = (lvt.rpc("bdev_get_bdevs"), lvt.rpc("bdev_lvol_get_lvstores"))
    for d in lvt.rpc("nbd_get_disks"):
        lvt.rpc("nbd_stop_disk", {"nbd_device": d["nbd_device"]})
    for lvs in leftovers[1]:
        lvt.rpc("bdev_lvol_delete_lvstore", {"uuid": lvs["uuid"]})
    for b in lvt.rpc("bdev_get_bdevs"):
        lvt.rpc("bdev_malloc_delete", {"name": b["name"]})
    assert leftovers == ([], []), f"leftover devices: {leftovers}"


def malloc(t: Target, name: str = "Malloc0", size_mb: int = MALLOC_SIZE_MB,
           bs: int = MALLOC_BS) -> str:
    out: str = sp(t, "bdev_malloc_create", "-b", name, str(size_mb), str(bs))
    return out


def qemu_io(uri: str, *cmds: str, check: bool = True, read_only: bool = False) -> str:
    argv = ["qemu-io", "-f", "raw", *(["-r"] if read_only else [])]
    for c in cmds:
        argv += ["-c", c]
    res = subprocess.run([*argv, uri], capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    if check:
        assert res.returncode == 0 and "Pattern verification failed" not in out \
            and "error" not in out.lower(), out
    return out


@pytest.fixture
def nbd(t: Target) -> Iterator[Callable[[str], str]]:
    """``export(bdev)`` -> an nbd+unix URI of the bdev on a fresh socket; stopped afterwards."""
    d = Path(tempfile.mkdtemp(prefix="pbln", dir="/tmp"))
    n = [0]

    def export(bdev: str) -> str:
        n[0] += 1
        uri = f"nbd+unix:///e{n[0]}?socket={d}/nbd{n[0]}.sock"
        got: str = t.rpc("nbd_start_disk", {"bdev_name": bdev, "nbd_device": uri})
        return got

    yield export
    for disk in t.rpc("nbd_get_disks"):
        t.rpc("nbd_stop_disk", {"nbd_device": disk["nbd_device"]})
    shutil.rmtree(d, ignore_errors=True)


# -- basic.sh --------------------------------------------------------------------------
def test_construct_lvs(t: Target) -> None:
    malloc(t)
    lvs_uuid = sp(t, "bdev_lvol_create_lvstore", "Malloc0", "lvs_test")
    lvs = sp(t, "bdev_lvol_get_lvstores", "-u", lvs_uuid)[0]
    assert (lvs["uuid"], lvs["name"], lvs["base_bdev"]) == (lvs_uuid, "lvs_test", "Malloc0")
    assert lvs["cluster_size"] == LVS_DEFAULT_CLUSTER_SIZE
    assert lvs["free_clusters"] == lvs["total_data_clusters"]
    assert lvs["total_data_clusters"] * lvs["cluster_size"] == LVS_USABLE_MB * MiB
    assert list(lvs) == ["uuid", "name", "base_bdev", "total_data_clusters", "free_clusters",
                         "block_size", "cluster_size", "max_growable_size"]
    assert lvs["block_size"] == MALLOC_BS
    malloc_info = t.rpc("bdev_get_bdevs", {"name": "Malloc0"})[0]
    assert (malloc_info["claimed"], malloc_info["claim_type"]) == (True, "read_many_write_one")
    sp_fails(t, "bdev_lvol_delete_lvstore", "-u", "00000000-0000-0000-0000-000000000000")
    sp(t, "bdev_lvol_delete_lvstore", "-u", lvs_uuid)
    sp_fails(t, "bdev_lvol_get_lvstores", "-u", lvs_uuid)
    sp_fails(t, "bdev_lvol_delete_lvstore", "-u", lvs_uuid)
    assert not t.rpc("bdev_get_bdevs", {"name": "Malloc0"})[0]["claimed"]
    sp(t, "bdev_malloc_delete", "Malloc0")


def test_construct_lvs_errors(t: Target) -> None:
    assert t.rpc_error("bdev_lvol_create_lvstore",
                       {"bdev_name": "NotMalloc", "lvs_name": "lvs_test"})["code"] == -19
    malloc(t)
    malloc(t, "Malloc1")
    sp(t, "bdev_lvol_create_lvstore", "Malloc0", "lvs_test")
    # two lvstores on the same bdev; the same name on another bdev
    assert t.rpc_error("bdev_lvol_create_lvstore",
                       {"bdev_name": "Malloc0", "lvs_name": "lvs_test2"})["code"] == -1
    assert t.rpc_error("bdev_lvol_create_lvstore",
                       {"bdev_name": "Malloc1", "lvs_name": "lvs_test"})["code"] == -17
    # cluster sizes: -c 1 and 8191 fail, 8192 works (basic.sh)
    for bad in ("1", "8191"):
        sp_fails(t, "bdev_lvol_create_lvstore", "Malloc1", "lvs2", "-c", bad)
    sp(t, "bdev_lvol_create_lvstore", "Malloc1", "lvs2", "-c", "8192")
    sp(t, "bdev_lvol_delete_lvstore", "-l", "lvs2")
    # clear methods: an invalid one fails to decode, each valid one works
    err = t.rpc_error("bdev_lvol_create_lvstore", {"bdev_name": "Malloc1", "lvs_name": "l",
                                                   "clear_method": "invalid"})
    assert err["code"] == -32603
    assert err["message"].startswith("spdk_json_decode_object failed")
    for method in ("none", "unmap", "write_zeroes"):
        sp(t, "bdev_lvol_create_lvstore", "Malloc1", "lvs_cm", "--clear-method", method)
        uuid = sp(t, "bdev_lvol_create", "-l", "lvs_cm", "lvol", "8")
        info = t.rpc("bdev_get_bdevs", {"name": uuid})[0]
        assert info["name"] == uuid and info["aliases"] == ["lvs_cm/lvol"]
        assert (info["block_size"], info["num_blocks"]) == (MALLOC_BS, 8 * MiB // MALLOC_BS)
        sp(t, "bdev_lvol_delete_lvstore", "-l", "lvs_cm")
    err = t.rpc_error("bdev_lvol_get_lvstores", {"uuid": "x", "lvs_name": "y"})
    assert err["code"] == -22
    sp(t, "bdev_lvol_delete_lvstore", "-l", "lvs_test")
    sp(t, "bdev_malloc_delete", "Malloc0")
    sp(t, "bdev_malloc_delete", "Malloc1")


def test_construct_lvols(t: Target) -> None:
    malloc(t)
    malloc(t, "Malloc1")
    lvs_uuid = sp(t, "bdev_lvol_create_lvstore", "Malloc0", "lvs_test")
    sp(t, "bdev_lvol_create_lvstore", "Malloc1", "lvs_test1")
    assert sp(t, "bdev_lvol_get_lvols", "-l", "lvs_test") == []
    lvol_uuid = sp(t, "bdev_lvol_create", "-u", lvs_uuid, "lvol_test", str(LVS_USABLE_MB))
    info = t.rpc("bdev_get_bdevs", {"name": lvol_uuid})[0]
    assert info["driver_specific"]["lvol"]["lvol_store_uuid"] == lvs_uuid
    assert list(info["driver_specific"]["lvol"]) == [
        "lvol_store_uuid", "base_bdev", "thin_provision", "num_allocated_clusters", "snapshot",
        "clone", "esnap_clone"]
    assert info["supported_io_types"]["flush"] is False
    # a full lvstore: a 1 MiB thick lvol fails; the same name fails; another lvstore is fine
    err = t.rpc_error("bdev_lvol_create", {"lvs_name": "lvs_test", "lvol_name": "x",
                                           "size_in_mib": 1})
    assert (err["code"], err["message"]) == (-32602, "No space left on device")
    err = t.rpc_error("bdev_lvol_create", {"lvs_name": "lvs_test", "lvol_name": "lvol_test",
                                           "size_in_mib": 1, "thin_provision": True})
    assert (err["code"], err["message"]) == (-17, "File exists")
    sp(t, "bdev_lvol_create", "-l", "lvs_test1", "lvol_test", "4")
    assert t.rpc_error("bdev_lvol_create", {"uuid": "00000000-0000-0000-0000-000000000000",
                                            "lvol_name": "y", "size_in_mib": 1})["code"] == -19
    lvols = sp(t, "bdev_lvol_get_lvols", "-l", "lvs_test")
    assert [(v["alias"], v["uuid"], v["name"], v["lvs"]) for v in lvols] == [
        ("lvs_test/lvol_test", lvol_uuid, "lvol_test", {"name": "lvs_test", "uuid": lvs_uuid})]
    # multi lvols, counted by product name
    sp(t, "bdev_lvol_delete", lvol_uuid)
    uuids = [sp(t, "bdev_lvol_create", "-l", "lvs_test", f"lvol_test{i}", "28") for i in range(4)]
    assert len([b for b in lvol_bdevs(t) if b["name"] in uuids]) == 4
    for u in uuids:
        sp(t, "bdev_lvol_delete", u)
    # nested: an lvstore on an lvol has one cluster less
    big = sp(t, "bdev_lvol_create", "-l", "lvs_test", "lvol_big", str(LVS_USABLE_MB))
    sp(t, "bdev_lvol_create_lvstore", big, "nested")
    nested = sp(t, "bdev_lvol_get_lvstores", "-l", "nested")[0]
    assert nested["total_data_clusters"] == LVS_USABLE_MB // 4 - 1
    sp(t, "bdev_lvol_create", "-l", "nested", "n1", str((LVS_USABLE_MB // 4 - 1) * 4))
    sp_fails(t, "bdev_lvol_create", "-l", "nested", "n2", str((LVS_USABLE_MB // 4 - 1) * 4))
    sp(t, "bdev_lvol_delete_lvstore", "-l", "nested")
    sp(t, "bdev_lvol_delete_lvstore", "-l", "lvs_test")
    sp(t, "bdev_lvol_delete_lvstore", "-l", "lvs_test1")
    sp(t, "bdev_malloc_delete", "Malloc0")
    sp(t, "bdev_malloc_delete", "Malloc1")


@needs_qemu_io
def test_clear_method_none_and_unmap(t: Target, nbd: Callable[[str], str]) -> None:
    """basic.sh: old data shows in a new lvol on a ``--clear-method none`` store; delete with
    unmap zeroes it, delete with ``-c none`` keeps it."""
    malloc(t)
    uri = nbd("Malloc0")
    qemu_io(uri, f"write -P 0xdd 0 {MALLOC_SIZE_MB}M")
    t.rpc("nbd_stop_disk", {"nbd_device": uri})
    sp(t, "bdev_lvol_create_lvstore", "Malloc0", "lvs", "--clear-method", "none")
    keep = sp(t, "bdev_lvol_create", "-l", "lvs", "-c", "none", "keep", "8")
    uri = nbd(keep)
    qemu_io(uri, "read -P 0xdd 0 8M")
    t.rpc("nbd_stop_disk", {"nbd_device": uri})
    sp(t, "bdev_lvol_delete", keep)
    gone = sp(t, "bdev_lvol_create", "-l", "lvs", "gone", "8")  # same clusters again
    uri = nbd(gone)
    qemu_io(uri, "read -P 0xdd 0 8M")
    t.rpc("nbd_stop_disk", {"nbd_device": uri})
    sp(t, "bdev_lvol_delete", gone)  # default: unmap
    again = sp(t, "bdev_lvol_create", "-l", "lvs", "again", "8")
    uri = nbd(again)
    qemu_io(uri, "read -P 0 0 8M")
    t.rpc("nbd_stop_disk", {"nbd_device": uri})
    sp(t, "bdev_lvol_delete_lvstore", "-l", "lvs")
    sp(t, "bdev_malloc_delete", "Malloc0")


# -- thin_provisioning.sh ----------------------------------------------------------------
@needs_qemu_io
def test_thin_lvol_check_space_and_overprovisioning(t: Target,
                                                   nbd: Callable[[str], str]) -> None:
    malloc(t)
    lvs_uuid = sp(t, "bdev_lvol_create_lvstore", "Malloc0", "lvs_test")
    free0 = sp(t, "bdev_lvol_get_lvstores", "-u", lvs_uuid)[0]["free_clusters"]
    size = LVS_USABLE_MB
    thin = sp(t, "bdev_lvol_create", "-l", "lvs_test", "-t", "lvol_test", str(size))

    def free() -> int:
        return int(sp(t, "bdev_lvol_get_lvstores", "-u", lvs_uuid)[0]["free_clusters"])

    assert free() == free0
    uri = nbd(thin)
    qemu_io(uri, "write -P 0xcc 0 4M")
    assert free() == free0 - 1
    qemu_io(uri, "write -P 0xcc 6M 4M")  # 1.5 clusters in, one cluster long: two more
    assert free() == free0 - 3
    info = t.rpc("bdev_lvol_get_lvols")[0]
    assert info["num_allocated_clusters"] == 3 and info["is_thin_provisioned"]
    qemu_io(uri, "read -P 0 4M 2M", "read -P 0xcc 6M 4M")
    # a second full-size thin lvol: writes fail with ENOSPC once the store is full
    thin2 = sp(t, "bdev_lvol_create", "-l", "lvs_test", "-t", "lvol_test2", str(size))
    uri2 = nbd(thin2)
    out = qemu_io(uri2, f"write -P 0xee 0 {size}M", check=False)
    assert "No space left on device" in out or "error" in out.lower(), out
    assert free() == 0
    qemu_io(uri, "read -P 0xcc 0 4M", "read -P 0 4M 2M")
    t.rpc("nbd_stop_disk", {"nbd_device": uri})
    t.rpc("nbd_stop_disk", {"nbd_device": uri2})
    sp(t, "bdev_lvol_delete", thin2)
    sp(t, "bdev_lvol_delete", thin)
    assert free() == free0
    sp(t, "bdev_lvol_delete_lvstore", "-u", lvs_uuid)
    sp(t, "bdev_malloc_delete", "Malloc0")


# -- snapshot_clone.sh -------------------------------------------------------------------
@needs_qemu_io
def test_snapshot_clone_relations_and_data(t: Target, nbd: Callable[[str], str]) -> None:
    malloc(t)
    sp(t, "bdev_lvol_create_lvstore", "Malloc0", "lvs_test")
    lvol = sp(t, "bdev_lvol_create", "-l", "lvs_test", "lvol_test", "20")
    uri = nbd(lvol)
    qemu_io(uri, "write -P 0xcc 0 20M")
    snap = sp(t, "bdev_lvol_snapshot", "lvs_test/lvol_test", "lvol_snapshot")
    sp_fails(t, "bdev_lvol_snapshot", "lvs_test/lvol_snapshot", "snap_of_snap")
    err = t.rpc_error("bdev_lvol_snapshot", {"lvol_name": lvol, "snapshot_name": "lvol_test"})
    assert (err["code"], err["message"]) == (-32602, "File exists")
    sp_fails(t, "bdev_lvol_clone", "lvs_test/lvol_test", "clone_of_writable")
    snap_uri = nbd(snap)
    out = qemu_io(snap_uri, "write -P 0xaa 0 4k", check=False)
    assert "permission denied" in out.lower(), out  # exported read-only
    qemu_io(uri, "write -P 0xee 4M 4k")  # only the origin changes
    qemu_io(snap_uri, "read -P 0xcc 0 20M", read_only=True)
    qemu_io(uri, "read -P 0xcc 0 4M", "read -P 0xee 4M 4k", "read -P 0xcc 4100k 16380k")
    clone1 = sp(t, "bdev_lvol_clone", "lvs_test/lvol_snapshot", "clone1")
    clone2 = sp(t, "bdev_lvol_clone", snap, "clone2")
    ds = t.rpc("bdev_get_bdevs", {"name": snap})[0]["driver_specific"]["lvol"]
    assert ds["snapshot"] and not ds["clone"] and ds["clones"] == ["clone1", "clone2",
                                                                    "lvol_test"]
    ds = t.rpc("bdev_get_bdevs", {"name": clone1})[0]["driver_specific"]["lvol"]
    assert ds["clone"] and ds["base_snapshot"] == "lvol_snapshot" and ds["thin_provision"]
    c1 = nbd(clone1)
    qemu_io(c1, "write -P 0x11 0 1M")
    qemu_io(c1, "read -P 0x11 0 1M", "read -P 0xcc 1M 19M")
    err = t.rpc_error("bdev_lvol_delete", {"name": snap})  # three clones
    assert (err["code"], err["message"]) == (-32603, "Operation not permitted")
    # inflate clone1: thick and independent
    sp(t, "bdev_lvol_inflate", "lvs_test/clone1")
    ds = t.rpc("bdev_get_bdevs", {"name": clone1})[0]["driver_specific"]["lvol"]
    assert not ds["thin_provision"] and not ds["clone"] and ds["num_allocated_clusters"] == 5
    t.rpc("nbd_stop_disk", {"nbd_device": snap_uri})
    sp(t, "bdev_lvol_delete", clone2)
    # read-only lvol: writes fail, its clone is writable
    sp(t, "bdev_lvol_set_read_only", "lvs_test/clone1")
    out = qemu_io(c1, "write -P 0x22 0 4k", check=False)
    assert "error" in out.lower() or "failed" in out.lower(), out
    c1c = sp(t, "bdev_lvol_clone", "lvs_test/clone1", "clone1_clone")
    qemu_io(nbd(c1c), "write -P 0x33 0 4k", "read -P 0x33 0 4k", "read -P 0x11 4k 1020k")
    # delete the snapshot with one clone left: merged, data kept
    sp(t, "bdev_lvol_delete", snap)
    ds = t.rpc("bdev_get_bdevs", {"name": lvol})[0]["driver_specific"]["lvol"]
    assert not ds["clone"] and ds["num_allocated_clusters"] == 5
    qemu_io(uri, "read -P 0xcc 0 4M", "read -P 0xee 4M 4k", "read -P 0xcc 4100k 16380k")
    for disk in t.rpc("nbd_get_disks"):
        t.rpc("nbd_stop_disk", {"nbd_device": disk["nbd_device"]})
    report = t.rpc("bdev_lvol_check_lvstore", {"lvs_name": "lvs_test"})
    assert report["ok"], report
    sp(t, "bdev_lvol_delete_lvstore", "-l", "lvs_test")
    sp(t, "bdev_malloc_delete", "Malloc0")


@needs_qemu_io
def test_clone_decouple_parent(t: Target, nbd: Callable[[str], str]) -> None:
    """snapshot_clone.sh: the chain snap <- snap2 <- lvol, data ``dd ee dd cc 00``."""
    malloc(t)
    sp(t, "bdev_lvol_create_lvstore", "Malloc0", "lvs_test")
    lvol = sp(t, "bdev_lvol_create", "-l", "lvs_test", "-t", "lvol_test", "20")
    err = t.rpc_error("bdev_lvol_decouple_parent", {"name": lvol})
    assert (err["code"], err["message"]) == (-32602, "Invalid argument")
    uri = nbd(lvol)
    qemu_io(uri, "write -P 0xdd 0 4M", "write -P 0xdd 8M 4M")
    sp(t, "bdev_lvol_snapshot", lvol, "snap")
    qemu_io(uri, "write -P 0xee 4M 4M")
    sp(t, "bdev_lvol_snapshot", lvol, "snap2")
    qemu_io(uri, "write -P 0xcc 12M 4M")
    checks = ("read -P 0xdd 0 4M", "read -P 0xee 4M 4M", "read -P 0xdd 8M 4M",
              "read -P 0xcc 12M 4M", "read -P 0 16M 4M")
    qemu_io(uri, *checks)
    sp(t, "bdev_lvol_decouple_parent", lvol)
    ds = t.rpc("bdev_get_bdevs", {"name": lvol})[0]["driver_specific"]["lvol"]
    assert ds["clone"] and ds["base_snapshot"] == "snap"
    ds2 = t.rpc("bdev_get_bdevs", {"name": "lvs_test/snap2"})[0]["driver_specific"]["lvol"]
    assert ds2["clone"] and ds2["snapshot"]
    qemu_io(uri, *checks)
    sp(t, "bdev_lvol_delete", "lvs_test/snap2")
    sp(t, "bdev_lvol_decouple_parent", lvol)
    ds = t.rpc("bdev_get_bdevs", {"name": lvol})[0]["driver_specific"]["lvol"]
    assert ds["thin_provision"] and not ds["clone"]
    qemu_io(uri, *checks)
    t.rpc("nbd_stop_disk", {"nbd_device": uri})
    sp(t, "bdev_lvol_delete_lvstore", "-l", "lvs_test")
    sp(t, "bdev_malloc_delete", "Malloc0")


# -- resize.sh, rename.sh, hotremove.sh --------------------------------------------------
def test_resize_lvol(t: Target) -> None:
    malloc(t)
    lvs = sp(t, "bdev_lvol_create_lvstore", "Malloc0", "lvs_test")
    lvol = sp(t, "bdev_lvol_create", "-u", lvs, "lvol_test", "4")

    def size() -> int:
        b = t.rpc("bdev_get_bdevs", {"name": lvol})[0]
        return int(b["num_blocks"] * b["block_size"])

    sp(t, "bdev_lvol_resize", lvol, "8")
    assert size() == 8 * MiB
    sp(t, "bdev_lvol_resize", "lvs_test/lvol_test", "16")
    assert size() == 16 * MiB
    sp(t, "bdev_lvol_resize", lvol, "5")  # rounded up to clusters
    assert size() == 8 * MiB
    sp(t, "bdev_lvol_resize", lvol, "0")
    assert size() == 0
    sp_fails(t, "bdev_lvol_resize", "00000000-0000-0000-0000-000000000000", "4")
    err = t.rpc_error("bdev_lvol_resize", {"name": lvol, "size_in_mib": 4 * LVS_USABLE_MB})
    assert (err["code"], err["message"]) == (-32602, "No space left on device")
    assert size() == 0
    free = sp(t, "bdev_lvol_get_lvstores", "-u", lvs)[0]["free_clusters"]
    assert free == LVS_USABLE_MB // 4
    sp(t, "bdev_lvol_delete", lvol)
    sp(t, "bdev_lvol_delete_lvstore", "-u", lvs)
    sp(t, "bdev_malloc_delete", "Malloc0")


def test_rename(t: Target) -> None:
    malloc(t)
    malloc(t, "Malloc1")
    sp(t, "bdev_lvol_create_lvstore", "Malloc0", "lvs_test")
    sp(t, "bdev_lvol_create_lvstore", "Malloc1", "lvs_other")
    uuids = [sp(t, "bdev_lvol_create", "-l", "lvs_test", f"lvol_test{i}", "4") for i in range(4)]
    sp(t, "bdev_lvol_rename_lvstore", "lvs_test", "lvs_new")
    assert sorted(a for b in lvol_bdevs(t) for a in b["aliases"]) == [
        f"lvs_new/lvol_test{i}" for i in range(4)]
    for i, u in enumerate(uuids):
        sp(t, "bdev_lvol_rename", f"lvs_new/lvol_test{i}", f"lvol_new{i}")
        assert t.rpc("bdev_get_bdevs", {"name": u})[0]["aliases"] == [f"lvs_new/lvol_new{i}"]
    # negatives: nothing changes
    err = t.rpc_error("bdev_lvol_rename_lvstore", {"old_name": "nope", "new_name": "x"})
    assert (err["code"], err["message"]) == (-2, "Lvol store nope not found")
    err = t.rpc_error("bdev_lvol_rename_lvstore", {"old_name": "lvs_new",
                                                   "new_name": "lvs_other"})
    assert (err["code"], err["message"]) == (-32602, "File exists")
    sp_fails(t, "bdev_lvol_rename", "lvs_new/nope", "x")
    sp_fails(t, "bdev_lvol_rename", "lvol_new0", "x")  # a bare name is not an alias
    err = t.rpc_error("bdev_lvol_rename", {"old_name": "lvs_new/lvol_new0",
                                           "new_name": "lvol_new1"})
    assert (err["code"], err["message"]) == (-32602, "File exists")
    assert [v["name"] for v in sp(t, "bdev_lvol_get_lvols", "-l", "lvs_new")] == [
        f"lvol_new{i}" for i in range(4)]
    sp(t, "bdev_lvol_delete_lvstore", "-l", "lvs_new")
    sp(t, "bdev_lvol_delete_lvstore", "-l", "lvs_other")
    sp(t, "bdev_malloc_delete", "Malloc0")
    sp(t, "bdev_malloc_delete", "Malloc1")


def test_hotremove_base_with_snapshots_and_clones(t: Target) -> None:
    malloc(t)
    sp(t, "bdev_lvol_create_lvstore", "Malloc0", "lvs_test")
    lvol = sp(t, "bdev_lvol_create", "-l", "lvs_test", "lvol_test", "8")
    snap = sp(t, "bdev_lvol_snapshot", lvol, "snap")
    sp(t, "bdev_lvol_clone", snap, "clone1")
    sp(t, "bdev_lvol_clone", snap, "clone2")
    sp_fails(t, "bdev_lvol_delete", snap)
    sp(t, "bdev_malloc_delete", "Malloc0")
    assert t.rpc("bdev_get_bdevs") == []
    assert t.rpc("bdev_lvol_get_lvstores") == []
    sp_fails(t, "bdev_lvol_delete_lvstore", "-l", "lvs_test")


def test_save_config_has_no_lvols(t: Target) -> None:
    malloc(t)
    sp(t, "bdev_lvol_create_lvstore", "Malloc0", "lvs_test")
    lvol = sp(t, "bdev_lvol_create", "-l", "lvs_test", "lvol_test", "8")
    snap = sp(t, "bdev_lvol_snapshot", lvol, "snap")
    sp(t, "bdev_lvol_clone", snap, "clone")
    config = sp(t, "save_config")
    assert "bdev_lvol" not in json.dumps(config)
    bdev_cfg = next(s for s in config["subsystems"] if s["subsystem"] == "bdev")["config"]
    assert bdev_cfg[-1] == {"method": "bdev_wait_for_examine"}
    assert t.cli("bdev_lvol_get_lvols", "-l", "lvs_test").returncode == 0
    sp(t, "bdev_lvol_delete_lvstore", "-l", "lvs_test")
    sp(t, "bdev_malloc_delete", "Malloc0")


# -- tasting.sh: restarts with an aio base -----------------------------------------------
@needs_qemu_io
def test_tasting_and_replay(start_target: Callable[..., Target], tmp_path: Path) -> None:
    image = tmp_path / "aio.img"
    with image.open("wb") as f:
        f.truncate(400 * MiB)
    sock = Path(tempfile.mkdtemp(prefix="pblt", dir="/tmp"))
    try:
        t = start_target()
        sp(t, "bdev_aio_create", str(image), "aio0", "4096")
        # a deleted lvstore is not found again
        sp(t, "bdev_lvol_create_lvstore", "aio0", "lvs_gone")
        sp(t, "bdev_lvol_delete_lvstore", "-l", "lvs_gone")
        sp(t, "bdev_aio_delete", "aio0")
        sp(t, "bdev_aio_create", str(image), "aio0", "4096")
        assert sp(t, "bdev_lvol_get_lvstores") == []
        sp(t, "bdev_lvol_create_lvstore", "aio0", "lvs_test", "-c", str(MiB))
        uuids = [sp(t, "bdev_lvol_create", "-l", "lvs_test", f"lvol_test{i}", "10")
                 for i in range(5)]
        sp(t, "bdev_lvol_snapshot", "lvs_test/lvol_test0", "snap")
        sp(t, "bdev_lvol_clone", "lvs_test/snap", "clone")
        uri = f"nbd+unix:///vol1?socket={sock}/nbd.sock"
        t.rpc("nbd_start_disk", {"bdev_name": "lvs_test/lvol_test1", "nbd_device": uri})
        qemu_io(uri, "write -P 0x5a 0 3M")
        before = ([b for b in t.rpc("bdev_get_bdevs") if b["product_name"] == "Logical Volume"],
                  t.rpc("bdev_lvol_get_lvstores"))
        config = sp(t, "save_config")
        assert "bdev_lvol" not in json.dumps(config)
        assert t.stop() == 0

        # Restart from the saved config: examine finds the store, the export replays.
        cfg = tmp_path / "config.json"
        cfg.write_text(json.dumps(config))
        t2 = start_target("--json", str(cfg))
        after = ([b for b in t2.rpc("bdev_get_bdevs") if b["product_name"] == "Logical Volume"],
                 t2.rpc("bdev_lvol_get_lvstores"))
        assert after == before
        assert [d["bdev_name"] for d in t2.rpc("nbd_get_disks")] == [uuids[1]]
        qemu_io(uri, "read -P 0x5a 0 3M")
        assert sp(t2, "save_config") == config
        report = t2.rpc("bdev_lvol_check_lvstore", {"lvs_name": "lvs_test"})
        assert report["ok"] and report["on_disk"]["lvols"] == 7, report
        # more lvols, delete everything
        sp(t2, "bdev_lvol_create", "-l", "lvs_test", "more", "10")
        t2.rpc("nbd_stop_disk", {"nbd_device": uri})
        for u in uuids[1:]:
            sp(t2, "bdev_lvol_delete", u)
        sp(t2, "bdev_lvol_delete_lvstore", "-l", "lvs_test")
        assert t2.stop() == 0

        # A destroyed lvstore stays gone (test_delete_lvol_store_persistent_positive).
        t3 = start_target()
        sp(t3, "bdev_aio_create", str(image), "aio0", "4096")
        assert sp(t3, "bdev_lvol_get_lvstores") == []
        assert lvol_bdevs(t3) == []
    finally:
        shutil.rmtree(sock, ignore_errors=True)


@needs_qemu_io
@pytest.mark.parametrize("seed", range(3))
def test_kill_9_under_operations_and_writes(start_target: Callable[..., Target], tmp_path: Path,
                                            seed: int) -> None:
    """SIGKILL at a random moment of random lvol operations and thin writes, several times;
    each restart finds the store, the checker accepts it, and the lvols are usable."""
    rng = random.Random(seed)
    image = tmp_path / "aio.img"
    with image.open("wb") as f:
        f.truncate(64 * MiB)
    sock = Path(tempfile.mkdtemp(prefix="pblk", dir="/tmp"))
    try:
        t = start_target()
        sp(t, "bdev_aio_create", str(image), "aio0", "4096")
        sp(t, "bdev_lvol_create_lvstore", "aio0", "lvs", "-c", str(MiB))
        t.rpc("bdev_lvol_create", {"lvs_name": "lvs", "lvol_name": "w", "size_in_mib": 16,
                                   "thin_provision": True})
        for round_ in range(4):
            uri = f"nbd+unix:///w?socket={sock}/nbd{round_}.sock"
            t.rpc("nbd_start_disk", {"bdev_name": "lvs/w", "nbd_device": uri})
            writer = subprocess.Popen(
                ["qemu-io", "-f", "raw", "-c", "write -P 0x77 0 16M", uri],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            stop = threading.Event()
            worker = threading.Thread(target=_random_rpcs, args=(t, rng.random(), stop))
            worker.start()
            time.sleep(rng.uniform(0.2, 1.5))
            t.stop(signal.SIGKILL)
            stop.set()
            worker.join()
            writer.kill()
            writer.wait()
            t = start_target()
            sp(t, "bdev_aio_create", str(image), "aio0", "4096")
            report = t.rpc("bdev_lvol_check_lvstore", {"lvs_name": "lvs"})
            assert report["ok"], report
            names = {v["name"] for v in t.rpc("bdev_lvol_get_lvols")}
            assert "w" in names
            for v in t.rpc("bdev_lvol_get_lvols"):  # every lvol reads
                t.rpc("bdev_get_bdevs", {"name": v["alias"]})
    finally:
        shutil.rmtree(sock, ignore_errors=True)


def _random_rpcs(t: Target, seed: float, stop: threading.Event) -> None:
    rng = random.Random(seed)
    n = 0
    while not stop.is_set():
        n += 1
        try:
            lvols = t.rpc("bdev_lvol_get_lvols")
            names = [v["alias"] for v in lvols if v["name"] != "w"]
            op = rng.choice(["create", "snapshot", "clone", "resize", "delete", "inflate",
                             "rename"])
            if op == "create" or not names:
                t.rpc("bdev_lvol_create", {"lvs_name": "lvs", "lvol_name": f"v{seed}{n}",
                                           "size_in_mib": rng.randint(1, 4),
                                           "thin_provision": rng.random() < 0.5})
            elif op == "snapshot":
                t.rpc("bdev_lvol_snapshot", {"lvol_name": rng.choice([*names, "lvs/w"]),
                                             "snapshot_name": f"s{seed}{n}"})
            elif op == "clone":
                t.rpc("bdev_lvol_clone", {"snapshot_name": rng.choice(names),
                                          "clone_name": f"c{seed}{n}"})
            elif op == "resize":
                t.rpc("bdev_lvol_resize", {"name": rng.choice(names),
                                           "size_in_mib": rng.randint(0, 6)})
            elif op == "delete":
                t.rpc("bdev_lvol_delete", {"name": rng.choice(names)})
            elif op == "inflate":
                t.rpc("bdev_lvol_inflate", {"name": rng.choice(names)})
            elif op == "rename":
                t.rpc("bdev_lvol_rename", {"old_name": rng.choice(names),
                                           "new_name": f"r{seed}{n}"})
        except JsonRpcException:
            continue
        except OSError:
            return


def test_grow_lvstore_like_nvmf_lvs_grow(start_target: Callable[..., Target],
                                         tmp_path: Path) -> None:
    """nvmf_lvs_grow.sh: 200 MiB aio, 4 MiB clusters, ratio 300 -> 49 data clusters; after
    the file grows to 400 MiB, rescan and grow -> 99, also after a restart."""
    image = tmp_path / "aio.img"
    with image.open("wb") as f:
        f.truncate(200 * MiB)
    t = start_target()
    sp(t, "bdev_aio_create", str(image), "aio0", "4096")
    lvs = sp(t, "bdev_lvol_create_lvstore", "aio0", "lvs", "-c", str(4 * MiB), "-m", "300")
    sp(t, "bdev_lvol_create", "-u", lvs, "lvol", "150")
    assert sp(t, "bdev_lvol_get_lvstores", "-u", lvs)[0]["total_data_clusters"] == 49
    with image.open("r+b") as f:
        f.truncate(400 * MiB)
    sp(t, "bdev_aio_rescan", "aio0")
    # Growing the base does not grow the lvstore by itself.
    assert sp(t, "bdev_lvol_get_lvstores", "-u", lvs)[0]["total_data_clusters"] == 49
    sp(t, "bdev_lvol_grow_lvstore", "-u", lvs)
    got = sp(t, "bdev_lvol_get_lvstores", "-u", lvs)[0]
    assert (got["total_data_clusters"], got["free_clusters"]) == (99, 99 - 38)
    assert t.stop() == 0
    t2 = start_target()
    sp(t2, "bdev_aio_create", str(image), "aio0", "4096")
    assert sp(t2, "bdev_lvol_get_lvstores", "-u", lvs)[0]["total_data_clusters"] == 99


@needs_qemu_io
def test_lvol_set_parent_from_snapshot(t: Target, nbd: Callable[[str], str]) -> None:
    """snapshot_clone.sh test_lvol_set_parent_from_snapshot / _failed: unwritten clusters show
    the new parent, the lvol's own clusters stay; a repeat, a non-snapshot, another lvstore
    and another size fail."""
    malloc(t)
    malloc(t, "Malloc1")
    sp(t, "bdev_lvol_create_lvstore", "Malloc0", "lvs_test")
    sp(t, "bdev_lvol_create_lvstore", "Malloc1", "lvs_other")
    origin = sp(t, "bdev_lvol_create", "-l", "lvs_test", "origin", "20")
    qemu_io(nbd(origin), "write -P 0xaa 0 20M")
    snap = sp(t, "bdev_lvol_snapshot", origin, "snap")
    lvol = sp(t, "bdev_lvol_create", "-l", "lvs_test", "-t", "lvol", "20")
    uri = nbd(lvol)
    qemu_io(uri, "write -P 0xbb 8M 4M")
    sp(t, "bdev_lvol_set_parent", "lvs_test/lvol", "lvs_test/snap")
    qemu_io(uri, "read -P 0xaa 0 8M", "read -P 0xbb 8M 4M", "read -P 0xaa 12M 8M")
    ds = t.rpc("bdev_get_bdevs", {"name": lvol})[0]["driver_specific"]["lvol"]
    assert ds["clone"] and ds["base_snapshot"] == "snap" and ds["thin_provision"]
    err = t.rpc_error("bdev_lvol_set_parent", {"lvol_name": lvol, "parent_name": snap})
    assert (err["code"], err["message"]) == (-32602, "File exists")
    other = sp(t, "bdev_lvol_create", "-l", "lvs_other", "-t", "other", "20")
    for parent in (origin, other):  # not a snapshot; a thin lvol of another lvstore
        err = t.rpc_error("bdev_lvol_set_parent", {"lvol_name": lvol, "parent_name": parent})
        assert (err["code"], err["message"]) == (-32602, "Invalid argument")
    assert t.rpc_error("bdev_lvol_set_parent", {"lvol_name": lvol,
                                                "parent_name": "Malloc1"})["code"] == -19
    for disk in t.rpc("nbd_get_disks"):
        t.rpc("nbd_stop_disk", {"nbd_device": disk["nbd_device"]})
    assert t.rpc("bdev_lvol_check_lvstore", {"lvs_name": "lvs_test"})["ok"]
    sp(t, "bdev_lvol_delete_lvstore", "-l", "lvs_test")
    sp(t, "bdev_lvol_delete_lvstore", "-l", "lvs_other")
    sp(t, "bdev_malloc_delete", "Malloc0")
    sp(t, "bdev_malloc_delete", "Malloc1")


@needs_qemu_io
def test_shallow_copy_compare(t: Target, nbd: Callable[[str], str]) -> None:
    """external_copy.sh: poll check for complete with copied == total == 2; the owned
    clusters compare equal, the rest of the destination stays zero."""
    malloc(t)
    malloc(t, "Malloc1", 32)
    sp(t, "bdev_lvol_create_lvstore", "Malloc0", "lvs_test")
    lvol = sp(t, "bdev_lvol_create", "-l", "lvs_test", "-t", "lvol", "20")
    uri = nbd(lvol)
    qemu_io(uri, "write -P 0xcc 0 4M", "write -P 0xdd 8M 4M")
    t.rpc("nbd_stop_disk", {"nbd_device": uri})
    err = t.rpc_error("bdev_lvol_start_shallow_copy", {"src_lvol_name": lvol,
                                                       "dst_bdev_name": "nope"})
    assert (err["code"], err["message"]) == (-32602, "No such device")
    # A writable source fails later, in check.
    op = sp(t, "bdev_lvol_start_shallow_copy", lvol, "Malloc1")["operation_id"]
    got = wait_until(lambda: (r := t.rpc("bdev_lvol_check_shallow_copy",
                                         {"operation_id": op}))["state"] != "in progress"
                     and r, 10)
    assert (got["state"], got["error"]) == ("error", "Operation not permitted")
    sp(t, "bdev_lvol_set_read_only", lvol)
    op = sp(t, "bdev_lvol_start_shallow_copy", "lvs_test/lvol", "Malloc1")["operation_id"]
    got = wait_until(lambda: (r := t.rpc("bdev_lvol_check_shallow_copy",
                                         {"operation_id": op}))["state"] != "in progress"
                     and r, 10)
    assert got == {"copied_clusters": 2, "total_clusters": 2, "state": "complete"}
    assert t.rpc_error("bdev_lvol_check_shallow_copy", {"operation_id": op})["code"] == -19
    dst = nbd("Malloc1")
    qemu_io(dst, "read -P 0xcc 0 4M", "read -P 0 4M 4M", "read -P 0xdd 8M 4M",
            "read -P 0 12M 20M")
    t.rpc("nbd_stop_disk", {"nbd_device": dst})
    sp(t, "bdev_lvol_delete_lvstore", "-l", "lvs_test")
    sp(t, "bdev_malloc_delete", "Malloc0")
    sp(t, "bdev_malloc_delete", "Malloc1")


@needs_qemu_io
@pytest.mark.skipif(shutil.which("nbdinfo") is None, reason="needs nbdinfo")
def test_thin_lvol_holes_in_the_nbd_allocation_map(t: Target, nbd: Callable[[str], str]) -> None:
    """base:allocation of a thin lvol: its own and its parent's clusters are data, the rest
    holes reading zeros."""
    malloc(t)
    sp(t, "bdev_lvol_create_lvstore", "Malloc0", "lvs_test")
    lvol = sp(t, "bdev_lvol_create", "-l", "lvs_test", "-t", "lvol", "16")
    uri = nbd(lvol)
    qemu_io(uri, "write -P 0xaa 4M 4k")
    sp(t, "bdev_lvol_snapshot", lvol, "snap")
    qemu_io(uri, "write -P 0xbb 12M 4k")
    out = subprocess.run(["nbdinfo", "--map", "--json", uri], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    extents = [(e["offset"], e["length"], e["type"]) for e in json.loads(out)]
    M = MiB
    assert extents == [(0, 4 * M, 3), (4 * M, 4 * M, 0), (8 * M, 4 * M, 3), (12 * M, 4 * M, 0)]
    t.rpc("nbd_stop_disk", {"nbd_device": uri})
    sp(t, "bdev_lvol_delete_lvstore", "-l", "lvs_test")
    sp(t, "bdev_malloc_delete", "Malloc0")


# -- test/bdev/nbd_common.sh: nbd_with_lvol_verify -----------------------------------------
@pytest.mark.skipif(not all(shutil.which(p) for p in ("qemu-img", "mkfs.ext4", "e2fsck")),
                    reason="needs qemu-img, mkfs.ext4 and e2fsck")
def test_nbd_with_lvol_verify(t: Target, nbd: Callable[[str], str], tmp_path: Path) -> None:
    """SPDK's ``nbd_with_lvol_verify`` over a network NBD export (the kernel device variant
    is in tests/kernel/guest/test_nbd_kernel.py): a 4 MiB lvol on a 16 MiB malloc gets an
    ext4 file system, which reads back whole and checks clean."""
    sp(t, "bdev_malloc_create", "-b", "malloc_lvol_verify", "16", "512")
    sp(t, "bdev_lvol_create_lvstore", "malloc_lvol_verify", "lvs")
    sp(t, "bdev_lvol_create", "lvol", "4", "-l", "lvs")
    uri = nbd("lvs/lvol")
    # mkfs.ext4 cannot open an NBD URI: it writes an image that qemu-img copies in.
    image, back = tmp_path / "fs.img", tmp_path / "back.img"
    with image.open("wb") as f:
        f.truncate(4 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, timeout=60)
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(image), uri],
                   check=True, timeout=60)
    t.spdk("nbd_stop_disk", uri)
    assert t.rpc("nbd_get_disks") == []
    uri = nbd("lvs/lvol")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(back)],
                   check=True, timeout=60)
    assert back.read_bytes() == image.read_bytes()
    subprocess.run(["e2fsck", "-fn", str(back)], check=True, timeout=60, capture_output=True)
    t.rpc("nbd_stop_disk", {"nbd_device": uri})
    sp(t, "bdev_lvol_delete_lvstore", "-l", "lvs")
    sp(t, "bdev_malloc_delete", "malloc_lvol_verify")


# -- external_snapshot.sh ----------------------------------------------------------------
ESNAP_UUID = "e4b40d8b-f623-416d-8234-baf5a4c83cbd"


def _aio_lvs(t: Target, path: Path, name: str = "aio_esnap") -> str:
    if not path.exists():
        with path.open("wb") as f:
            f.truncate(64 * MiB)
    sp(t, "bdev_aio_create", str(path), name, "512")
    return name


def test_esnap_reload_and_missing(t: Target, tmp_path: Path) -> None:
    """test_esnap_reload and test_esnap_reload_missing: an esnap clone, its snapshot and a
    clone of that snapshot come back with the store; without the esnap they are degraded
    (listed, no bdev), and the esnap's late arrival brings their bdevs."""
    aio = _aio_lvs(t, tmp_path / "aio0")
    sp(t, "bdev_lvol_create_lvstore", "-c", str(16 * 1024), aio, "lvs_test")
    sp(t, "bdev_malloc_create", "-u", ESNAP_UUID, "1", "512")
    eclone = sp(t, "bdev_lvol_clone_bdev", ESNAP_UUID, "lvs_test", "eclone1")
    esnap = t.rpc("bdev_get_bdevs", {"name": ESNAP_UUID})[0]
    assert (esnap["claimed"], esnap["claim_type"]) == (True, "read_many_write_none")
    info = sp(t, "bdev_get_bdevs", "-b", "lvs_test/eclone1")[0]
    lv = info["driver_specific"]["lvol"]
    assert info["name"] == eclone and lv["esnap_clone"] and not lv["clone"]
    assert lv["external_snapshot_name"] == ESNAP_UUID and info["num_blocks"] == 2048
    snap = sp(t, "bdev_lvol_snapshot", eclone, "snap1")
    clone = sp(t, "bdev_lvol_clone", snap, "clone1")

    def reload() -> None:
        sp(t, "bdev_aio_delete", aio)
        sp_fails(t, "bdev_lvol_get_lvstores", "-l", "lvs_test")
        _aio_lvs(t, tmp_path / "aio0")

    reload()
    for name, uuid in (("eclone1", eclone), ("snap1", snap), ("clone1", clone)):
        assert sp(t, "bdev_get_bdevs", "-b", f"lvs_test/{name}")[0]["name"] == uuid
    lvols = {v["name"]: v for v in sp(t, "bdev_lvol_get_lvols")}
    assert lvols["snap1"]["is_esnap_clone"] and not lvols["eclone1"]["is_esnap_clone"]
    assert not any(v["is_degraded"] for v in lvols.values())

    # Missing at load: degraded, no bdev; the esnap's arrival revives all three.
    sp(t, "bdev_aio_delete", aio)
    sp(t, "bdev_malloc_delete", ESNAP_UUID)
    _aio_lvs(t, tmp_path / "aio0")
    lvols = {v["name"]: v for v in sp(t, "bdev_lvol_get_lvols")}
    assert sorted(lvols) == ["clone1", "eclone1", "snap1"]
    assert all(v["is_degraded"] for v in lvols.values())
    sp_fails(t, "bdev_get_bdevs", "-b", "lvs_test/eclone1")
    sp(t, "bdev_malloc_create", "-u", ESNAP_UUID, "1", "512")
    for name in ("eclone1", "snap1", "clone1"):
        sp(t, "bdev_get_bdevs", "-b", f"lvs_test/{name}")
    assert not any(v["is_degraded"] for v in sp(t, "bdev_lvol_get_lvols"))

    # Hot-remove of the esnap degrades them again; degraded lvols can be deleted.
    sp(t, "bdev_malloc_delete", ESNAP_UUID)
    assert [b["name"] for b in lvol_bdevs(t)] == []
    sp(t, "bdev_lvol_delete", "lvs_test/clone1")
    sp(t, "bdev_lvol_delete", snap)
    sp(t, "bdev_lvol_delete", "lvs_test/eclone1")
    assert sp(t, "bdev_lvol_get_lvols") == []
    assert t.rpc("bdev_lvol_check_lvstore", {"lvs_name": "lvs_test"})["ok"]
    sp(t, "bdev_lvol_delete_lvstore", "-l", "lvs_test")
    sp(t, "bdev_aio_delete", aio)


@needs_qemu_io
def test_esnap_clone_data(t: Target, nbd: Callable[[str], str]) -> None:
    """Reads of unwritten clusters come from the esnap, a partial write copies the rest of
    its cluster from it, and the esnap itself is never written; errors as SPDK's."""
    malloc(t)
    sp(t, "bdev_lvol_create_lvstore", "Malloc0", "lvs_test")
    esnap = sp(t, "bdev_malloc_create", "-b", "esnap", "8", "512")
    uri = nbd(esnap)
    qemu_io(uri, "write -P 0x11 0 8M")
    # Written by an export: it cannot be claimed read_many_write_none.
    assert "Operation not permitted" in sp_fails(t, "bdev_lvol_clone_bdev", "esnap",
                                                 "lvs_test", "c")
    t.rpc("nbd_stop_disk", {"nbd_device": uri})
    err = sp_fails(t, "bdev_lvol_clone_bdev", "nope", "lvs_test", "c")
    assert "bdev does not exist" in err
    err = sp_fails(t, "bdev_lvol_clone_bdev", "esnap", "nope", "c")
    assert "lvs does not exist" in err
    inner = sp(t, "bdev_lvol_create", "-l", "lvs_test", "inner", "4")
    err = sp_fails(t, "bdev_lvol_clone_bdev", inner, "lvs_test", "c")
    assert "use bdev_lvol_clone instead" in err
    odd = sp(t, "bdev_malloc_create", "-b", "odd", "6", "512")  # not whole 4 MiB clusters
    assert "Invalid argument" in sp_fails(t, "bdev_lvol_clone_bdev", odd, "lvs_test", "c")
    eclone = sp(t, "bdev_lvol_clone_bdev", "esnap", "lvs_test", "eclone")
    # Claimed read_many_write_none: nobody may write the esnap now.
    assert t.rpc_error("nbd_start_disk", {"bdev_name": "esnap",
                                          "nbd_device": "nbd+unix:///x?socket=/tmp/x"})
    u = nbd(eclone)
    qemu_io(u, "read -P 0x11 0 8M", "write -P 0x22 4M 4k", "read -P 0x11 4100k 4092k",
            "read -P 0x22 4M 4k", "read -P 0x11 0 4M")
    assert sp(t, "bdev_lvol_get_lvols", "-l", "lvs_test")[1]["num_allocated_clusters"] == 1
    # Inflate: every cluster copied, no more esnap.
    sp(t, "bdev_lvol_inflate", eclone)
    qemu_io(u, "read -P 0x11 0 4M", "read -P 0x22 4M 4k")
    lv = sp(t, "bdev_get_bdevs", "-b", eclone)[0]["driver_specific"]["lvol"]
    assert not lv["esnap_clone"] and not lv["thin_provision"]
    assert not t.rpc("bdev_get_bdevs", {"name": "esnap"})[0]["claimed"]
    t.rpc("nbd_stop_disk", {"nbd_device": u})
    sp(t, "bdev_lvol_delete_lvstore", "-l", "lvs_test")
    for b in ("Malloc0", "esnap", "odd"):
        sp(t, "bdev_malloc_delete", b)


@needs_qemu_io
def test_lvol_set_parent_bdev_from_none(t: Target, nbd: Callable[[str], str]) -> None:
    """test_lvol_set_parent_bdev_from_none: a thin lvol gets an external parent; its own
    clusters stay, the others read the esnap; a repeated call fails."""
    malloc(t)
    sp(t, "bdev_lvol_create_lvstore", "Malloc0", "lvs_test")
    esnap = sp(t, "bdev_malloc_create", "-b", "esnap", "8", "512")
    u = nbd(esnap)
    qemu_io(u, "write -P 0x33 0 8M")
    t.rpc("nbd_stop_disk", {"nbd_device": u})
    thick = sp(t, "bdev_lvol_create", "-l", "lvs_test", "thick", "8")
    assert "Invalid argument" in sp_fails(t, "bdev_lvol_set_parent_bdev", thick, "esnap")
    lvol = sp(t, "bdev_lvol_create", "-l", "lvs_test", "-t", "lvol", "8")
    u = nbd(lvol)
    qemu_io(u, "write -P 0x44 0 4M")
    sp(t, "bdev_lvol_set_parent_bdev", lvol, "esnap")
    assert "File exists" in sp_fails(t, "bdev_lvol_set_parent_bdev", lvol, "esnap")
    qemu_io(u, "read -P 0x44 0 4M", "read -P 0x33 4M 4M")
    info = {v["name"]: v for v in sp(t, "bdev_lvol_get_lvols", "-l", "lvs_test")}
    assert info["lvol"]["is_esnap_clone"] and not info["lvol"]["is_clone"]
    t.rpc("nbd_stop_disk", {"nbd_device": u})
    sp(t, "bdev_lvol_delete_lvstore", "-l", "lvs_test")
    sp(t, "bdev_malloc_delete", "Malloc0")
    sp(t, "bdev_malloc_delete", "esnap")
