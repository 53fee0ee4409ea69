"""Helpers shared by the guest-side kernel tests: block-device ioctls, targets, waiting."""

from __future__ import annotations

import fcntl
import os
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Target
from tests.conftest import wait_until as wait_for  # also re-exported

BLKDISCARD = 0x1277
BLKZEROOUT = 0x127F
BLKGETSIZE64 = 0x80081272
MiB = 1 << 20


def start(targets: list[Target], tmp_path: Path, *args: str, timeout: float = 90) -> Target:
    """Start ``python -m pybdev`` with ``args``; the ``targets`` fixture stops it."""
    n = len(targets)
    t = Target(tmp_path / f"t{n}.sock", list(args), tmp_path / f"t{n}.log")
    targets.append(t)
    return t.wait_ready(timeout=timeout)


def dev_size(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(8)
        fcntl.ioctl(fd, BLKGETSIZE64, buf)
        return int.from_bytes(buf, "little")
    finally:
        os.close(fd)


def lvol_fs_snapshot_clone(t: Target, tmp_path: Path, start_disk: Callable[[str], str],
                           stop_disk: Callable[[str], None]) -> None:
    """An lvol with ext4 on a kernel device, snapshotted while mounted, its clone mounted.

    ``start_disk(bdev)`` exports a bdev on a kernel block device and returns its path;
    ``stop_disk(path)`` stops it. The snapshot is taken between ``fsfreeze -f`` and
    ``fsfreeze -u``; files written before it are on the clone (a second device), the file
    written after it is not, and the clone takes writes of its own (thin allocation).
    """
    subprocess.run(["modprobe", "ext4"], check=False, timeout=60)  # no auto-load in the VM
    assert t.rpc("bdev_malloc_create", {"name": "LvsBase", "num_blocks": 64 * MiB // 512,
                                        "block_size": 512}) == "LvsBase"
    t.rpc("bdev_lvol_create_lvstore", {"bdev_name": "LvsBase", "lvs_name": "lvs",
                                       "cluster_sz": MiB})
    t.rpc("bdev_lvol_create", {"lvs_name": "lvs", "lvol_name": "vol", "size_in_mib": 20})
    dev = start_disk("lvs/vol")
    wait_for(lambda: dev_size(dev) == 20 * MiB, 30, f"{dev} to get its size")
    subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True, timeout=120)
    mnt, mnt2 = tmp_path / "origin", tmp_path / "clone"
    mnt.mkdir()
    mnt2.mkdir()
    rnd = random.Random(15)
    before = {"a.bin": rnd.randbytes(2 * MiB + 77), "b.txt": b"written before the snapshot\n"}
    subprocess.run(["mount", "-t", "ext4", dev, str(mnt)], check=True, timeout=60)
    mounted = [mnt]
    try:
        for name, data in before.items():
            (mnt / name).write_bytes(data)
        subprocess.run(["fsfreeze", "-f", str(mnt)], check=True, timeout=60)
        try:
            snap = t.rpc("bdev_lvol_snapshot", {"lvol_name": "lvs/vol",
                                                "snapshot_name": "snap"}, timeout=120)
        finally:
            subprocess.run(["fsfreeze", "-u", str(mnt)], check=True, timeout=60)
        (mnt / "after.txt").write_bytes(b"written after the snapshot\n")
        os.sync()
        clone = t.rpc("bdev_lvol_clone", {"snapshot_name": "lvs/snap", "clone_name": "clone"},
                      timeout=120)
        info = {v["name"]: v for v in t.rpc("bdev_lvol_get_lvols", {"lvs_name": "lvs"})}
        assert info["snap"]["uuid"] == snap and info["snap"]["is_snapshot"]
        assert info["clone"]["uuid"] == clone and info["clone"]["is_clone"]
        assert info["vol"]["is_clone"]  # the origin became the snapshot's thin clone
        dev2 = start_disk("lvs/clone")
        wait_for(lambda: dev_size(dev2) == 20 * MiB, 30, f"{dev2} to get its size")
        subprocess.run(["mount", "-t", "ext4", dev2, str(mnt2)], check=True, timeout=60)
        mounted.append(mnt2)
        subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=False)
        for name, data in before.items():
            assert (mnt2 / name).read_bytes() == data, name
        assert not (mnt2 / "after.txt").exists()
        (mnt2 / "clone.txt").write_bytes(b"only on the clone\n")
        os.sync()
        assert (mnt / "after.txt").exists() and not (mnt / "clone.txt").exists()
        assert (mnt / "a.bin").read_bytes() == before["a.bin"]
    finally:
        for m in reversed(mounted):
            subprocess.run(["umount", str(m)], check=True, timeout=60)
    stop_disk(dev)
    stop_disk(dev2)
    allocated = {v["name"]: v["num_allocated_clusters"]
                 for v in t.rpc("bdev_lvol_get_lvols", {"lvs_name": "lvs"})}
    assert allocated["snap"] == 20 and 0 < allocated["clone"] < 20, allocated
    report = t.rpc("bdev_lvol_check_lvstore", {"lvs_name": "lvs"})
    assert report["ok"], report
    assert t.rpc("bdev_lvol_delete_lvstore", {"lvs_name": "lvs"}) is True
    assert t.rpc("bdev_malloc_delete", {"name": "LvsBase"}) is True
