"""ublk on a real kernel: runs inside the kernel VM (``tests/kernel/test_ublk_kernel.py``).

SPDK's ``test/ublk/ublk.sh`` and ``ublk_recovery.sh`` scenarios plus data, file system
(also on an lvol, snapshotted while mounted and its clone mounted), hot-remove, config round
trip and bad-input checks, against ``python -m pybdev`` started here as a subprocess and
driven over its RPC socket.
"""

from __future__ import annotations

import errno
import fcntl
import json
import mmap
import os
import random
import shutil
import signal
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Target
from tests.kernel.guest import blockdev
from tests.kernel.guest.blockdev import BLKDISCARD, BLKZEROOUT, MiB, dev_size, wait_for


def start(targets: list[Target], tmp_path: Path, *args: str) -> Target:
    # 120 s: the first start imports everything over 9p under emulation; 60 s ran out
    # on a loaded host.
    return blockdev.start(targets, tmp_path, "-m", "0x3", "-L", "ublk", *args, timeout=120)


@pytest.fixture
def tgt(targets: list[Target], tmp_path: Path) -> Target:
    t = start(targets, tmp_path)
    assert t.rpc("ublk_create_target") is True
    return t


def is_blockdev(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


def aligned(data: bytes) -> mmap.mmap:
    m = mmap.mmap(-1, max(len(data), mmap.PAGESIZE))
    m[: len(data)] = data
    return m


def direct_write(path: str, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        buf = aligned(data)
        n = os.pwritev(fd, [memoryview(buf)[: len(data)]], offset)
        assert n == len(data)
        buf.close()
    finally:
        os.close(fd)


def direct_read(path: str, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, max(length, mmap.PAGESIZE))
        n = os.preadv(fd, [memoryview(buf)[:length]], offset)
        assert n == length
        out = buf[:length]
        buf.close()
        return out
    finally:
        os.close(fd)


def ioctl_range(path: str, req: int, offset: int, length: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        fcntl.ioctl(fd, req, struct.pack("QQ", offset, length))
    finally:
        os.close(fd)


def malloc(t: Target, name: str, mb: int = 32, bs: int = 4096) -> str:
    return t.rpc("bdev_malloc_create", {"name": name, "num_blocks": mb * MiB // bs,
                                        "block_size": bs})


# -- SPDK's ublk.sh -------------------------------------------------------------------
def test_create_ublk(tgt: Target) -> None:
    name = malloc(tgt, "Malloc0", 128)
    assert tgt.cli("ublk_start_disk", name, "0", "-q", "4", "-d", "512").stdout.strip() == "0"
    disks = tgt.rpc("ublk_get_disks", {"ublk_id": 0})
    assert disks == [{"ublk_device": "/dev/ublkb0", "id": 0, "queue_depth": 512,
                      "num_queues": 4, "bdev_name": "Malloc0"}]
    assert is_blockdev("/dev/ublkb0")
    assert dev_size("/dev/ublkb0") == 128 * MiB
    # The server runs in its own mount namespace (no exit deadlock with our mounts).
    assert os.readlink(f"/proc/{tgt.proc.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    pattern = b"\xcc" * MiB
    for i in range(4):
        direct_write("/dev/ublkb0", i * 8 * MiB, pattern)
    for i in range(4):
        assert direct_read("/dev/ublkb0", i * 8 * MiB, MiB) == pattern
    # framework_get_reactors reports the queue threads that run (the kernel caps the four
    # queues asked for at the number of CPUs) beside the event loop's, each on its core.
    reactors = tgt.rpc("framework_get_reactors")["reactors"]
    threads = {w["name"]: r["lcore"] for r in reactors for w in r["lw_threads"]}
    queues = min(4, os.cpu_count() or 1)
    assert sorted(threads) == ["app_thread", *(f"ublk0q{i}" for i in range(queues))]
    assert {threads[f"ublk0q{i}"] for i in range(queues)} == set(range(min(queues, 2)))
    tgt.cli("ublk_stop_disk", "0")
    err = tgt.rpc_error("ublk_stop_disk", {"ublk_id": 0})
    assert err["code"] == -errno.ENODEV
    assert tgt.rpc("ublk_destroy_target") is True
    tgt.rpc("bdev_malloc_delete", {"name": "Malloc0"})
    assert not os.path.exists("/dev/ublkb0")
    assert not os.path.exists("/dev/ublkc0")


def test_create_multi_ublk(tgt: Target) -> None:
    for i in range(4):
        malloc(tgt, f"Malloc{i}", 16)
        assert tgt.rpc("ublk_start_disk", {"bdev_name": f"Malloc{i}", "ublk_id": i}) == i
    disks = tgt.rpc("ublk_get_disks")
    assert [d["ublk_device"] for d in disks] == [f"/dev/ublkb{i}" for i in range(4)]
    assert [d["bdev_name"] for d in disks] == [f"Malloc{i}" for i in range(4)]
    assert all(d["num_queues"] == 1 and d["queue_depth"] == 128 for d in disks)
    for i in range(4):
        data = bytes([i + 1]) * 65536
        direct_write(f"/dev/ublkb{i}", 4096, data)
    for i in range(4):
        assert direct_read(f"/dev/ublkb{i}", 4096, 65536) == bytes([i + 1]) * 65536
    assert tgt.rpc("ublk_stop_disk", {"ublk_id": 1}) is True
    assert [d["id"] for d in tgt.rpc("ublk_get_disks")] == [0, 2, 3]
    assert tgt.rpc("ublk_destroy_target", timeout=120) is True
    for i in range(4):
        assert not os.path.exists(f"/dev/ublkb{i}")
    assert tgt.rpc_error("ublk_get_disks", {"ublk_id": 2})["code"] == -errno.ENODEV


# -- data -----------------------------------------------------------------------------
def _data_checks(path: str, size: int, seed: int) -> None:
    sizes = [512, 4096, 4096 * 3, 65536, 128 * 1024, MiB]
    errors: list[str] = []

    def worker(n: int) -> None:
        rnd = random.Random(seed * 100 + n)
        region = size // 4
        base = n * region
        try:
            for _ in range(12):
                length = rnd.choice(sizes)
                offset = base + rnd.randrange(0, (region - length) // 512) * 512
                data = rnd.randbytes(length)
                direct_write(path, offset, data)
                got = direct_read(path, offset, length)
                if got != data:
                    errors.append(f"mismatch at {offset}+{length}")
        except Exception as e:  # reported below: a thread's exception is otherwise lost
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors


def test_data_user_copy(tgt: Target) -> None:
    malloc(tgt, "Malloc0", 64, 512)
    assert tgt.rpc("ublk_start_disk", {"bdev_name": "Malloc0", "ublk_id": 3,
                                       "num_queues": 2, "queue_depth": 64}) == 3
    path = "/dev/ublkb3"
    assert dev_size(path) == 64 * MiB
    _data_checks(path, 64 * MiB, 1)
    # discard and write-zeroes read back zeros
    direct_write(path, MiB, b"\x5a" * MiB)
    ioctl_range(path, BLKDISCARD, MiB, 256 * 1024)
    assert direct_read(path, MiB, 256 * 1024) == bytes(256 * 1024)
    assert direct_read(path, MiB + 256 * 1024, 4096) == b"\x5a" * 4096
    ioctl_range(path, BLKZEROOUT, MiB + 512 * 1024, 512 * 1024)
    assert direct_read(path, MiB + 512 * 1024, 512 * 1024) == bytes(512 * 1024)
    assert direct_read(path, MiB + 256 * 1024, 4096) == b"\x5a" * 4096
    # flush (volatile cache) reaches the target without error
    fd = os.open(path, os.O_WRONLY)
    os.fsync(fd)
    os.close(fd)
    # Bytes written through the device are in the bdev.
    stats = tgt.rpc("bdev_get_iostat", {"name": "Malloc0"})["bdevs"][0]
    assert stats["num_write_ops"] > 0 and stats["num_read_ops"] > 0
    assert tgt.rpc("ublk_stop_disk", {"ublk_id": 3}) is True
    # malloc declares thread_safe_submit: its reads and writes were served on the queue
    # threads, and still counted in the bdev's statistics.
    served = _served_on_queue_threads(tgt, "/dev/ublkb3")
    assert served[1] > 0, served


def _served_on_queue_threads(t: Target, path: str) -> tuple[int, int]:
    """(requests, served on the queue threads) from the device's stop log line."""
    line = wait_for(lambda: [ln for ln in t.log().splitlines()
                             if f"ublk device {path} stopped:" in ln], 30, "stop logged")[-1]
    words = line.split(":")[-1].split()
    return int(words[0]), int(words[2])


def test_event_loop_path(tgt: Target) -> None:
    """A bdev without thread_safe_submit (passthru) is served on the event loop; counts
    in iostat match what the device did on both paths."""
    malloc(tgt, "Malloc0", 32, 512)
    tgt.rpc("bdev_passthru_create", {"base_bdev_name": "Malloc0", "name": "Pt0"})
    assert tgt.rpc("ublk_start_disk", {"bdev_name": "Pt0", "ublk_id": 4,
                                       "num_queues": 2, "queue_depth": 32}) == 4
    _data_checks("/dev/ublkb4", 32 * MiB, 3)
    before = tgt.rpc("bdev_get_iostat", {"name": "Pt0"})["bdevs"][0]
    direct_write("/dev/ublkb4", 0, b"\x77" * 65536)
    assert direct_read("/dev/ublkb4", 0, 65536) == b"\x77" * 65536
    after = tgt.rpc("bdev_get_iostat", {"name": "Pt0"})["bdevs"][0]
    assert after["num_write_ops"] == before["num_write_ops"] + 1
    assert after["num_read_ops"] == before["num_read_ops"] + 1
    assert tgt.rpc("ublk_stop_disk", {"ublk_id": 4}) is True
    requests, served = _served_on_queue_threads(tgt, "/dev/ublkb4")
    assert requests > 0 and served == 0, (requests, served)
    # passthru claims its base: release it before exporting the base itself.
    assert tgt.rpc("bdev_passthru_delete", {"name": "Pt0"}) is True
    # The same malloc bdev exported directly: served on the queue threads, and the
    # statistics count exactly the requests made (no update lost between threads).
    assert tgt.rpc("ublk_start_disk", {"bdev_name": "Malloc0", "ublk_id": 6,
                                       "num_queues": 2, "queue_depth": 32}) == 6
    before = tgt.rpc("bdev_get_iostat", {"name": "Malloc0"})["bdevs"][0]
    for i in range(64):
        direct_write("/dev/ublkb6", i * 4096, bytes([i]) * 4096)
    for i in range(64):
        assert direct_read("/dev/ublkb6", i * 4096, 4096) == bytes([i]) * 4096
    after = tgt.rpc("bdev_get_iostat", {"name": "Malloc0"})["bdevs"][0]
    assert after["num_write_ops"] - before["num_write_ops"] == 64
    assert after["num_read_ops"] - before["num_read_ops"] == 64
    assert tgt.rpc("ublk_stop_disk", {"ublk_id": 6}) is True
    assert _served_on_queue_threads(tgt, "/dev/ublkb6")[1] >= 128


def test_data_need_get_data(targets: list[Target], tmp_path: Path) -> None:
    t = start(targets, tmp_path)
    assert t.rpc("ublk_create_target", {"disable_user_copy": True}) is True
    malloc(t, "Malloc0", 32, 512)
    assert t.rpc("ublk_start_disk", {"bdev_name": "Malloc0", "ublk_id": 0,
                                     "num_queues": 2, "queue_depth": 32}) == 0
    _data_checks("/dev/ublkb0", 32 * MiB, 2)
    config = t.rpc("framework_get_config", {"name": "ublk"})
    assert config[0] == {"method": "ublk_create_target",
                         "params": {"cpumask": "3", "disable_user_copy": True}}
    assert t.rpc("ublk_destroy_target") is True


def test_mkfs_mount(tgt: Target, tmp_path: Path) -> None:
    mkfs = shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"
    if not os.path.exists(mkfs):
        pytest.skip("mkfs.ext4 not installed")
    malloc(tgt, "Malloc0", 64)
    assert tgt.rpc("ublk_start_disk", {"bdev_name": "Malloc0", "ublk_id": 0}) == 0
    subprocess.run([mkfs, "-q", "-F", "/dev/ublkb0"], check=True, timeout=120)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # The kernel's own module auto-load runs outside the VM's chroot and cannot find ext4.
    subprocess.run(["modprobe", "ext4"], check=False, timeout=60)
    subprocess.run(["mount", "-t", "ext4", "/dev/ublkb0", str(mnt)], check=True, timeout=60)
    payload = random.Random(7).randbytes(3 * MiB + 123)
    try:
        (mnt / "file").write_bytes(payload)
        os.sync()
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=60)
    subprocess.run(["mount", "-t", "ext4", "/dev/ublkb0", str(mnt)], check=True, timeout=60)
    try:
        subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=False)
        assert (mnt / "file").read_bytes() == payload
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=60)
    assert tgt.rpc("ublk_stop_disk", {"ublk_id": 0}) is True


def test_mkfs_lvol_snapshot_clone(tgt: Target, tmp_path: Path) -> None:
    ids = {"lvs/vol": 1, "lvs/clone": 2}

    def start_disk(bdev: str) -> str:
        assert tgt.rpc("ublk_start_disk", {"bdev_name": bdev, "ublk_id": ids[bdev]}) == ids[bdev]
        return f"/dev/ublkb{ids[bdev]}"

    def stop_disk(dev: str) -> None:
        assert tgt.rpc("ublk_stop_disk", {"ublk_id": int(dev[len("/dev/ublkb"):])}) is True
        wait_for(lambda: not os.path.exists(dev), 30, f"{dev} to go")

    blockdev.lvol_fs_snapshot_clone(tgt, tmp_path, start_disk, stop_disk)


def test_hot_remove_under_io(tgt: Target) -> None:
    malloc(tgt, "Malloc0", 16)
    assert tgt.rpc("ublk_start_disk", {"bdev_name": "Malloc0", "ublk_id": 5}) == 5
    stop = threading.Event()
    outcome: dict[str, object] = {"ios": 0}

    def io() -> None:
        data = b"\x11" * 65536
        try:
            while not stop.is_set():
                direct_write("/dev/ublkb5", 0, data)
                direct_read("/dev/ublkb5", 0, 65536)
                outcome["ios"] = int(outcome["ios"]) + 1  # type: ignore[call-overload]
        except OSError as e:
            outcome["error"] = e.errno

    th = threading.Thread(target=io)
    th.start()
    wait_for(lambda: int(outcome["ios"]) > 3, what="I/O to run")  # type: ignore[call-overload]
    assert tgt.rpc("bdev_malloc_delete", {"name": "Malloc0"}, timeout=60) is True
    wait_for(lambda: not th.is_alive() or not is_blockdev("/dev/ublkb5"), 30, "device gone")
    stop.set()
    th.join(30)
    assert not th.is_alive(), "I/O hangs after hot-remove"
    wait_for(lambda: tgt.rpc("ublk_get_disks") == [], 30, "device unlisted")
    wait_for(lambda: not os.path.exists("/dev/ublkb5"), 30, "/dev/ublkb5 removed")


# -- recovery ---------------------------------------------------------------------------
def test_kill_and_recover(targets: list[Target], tmp_path: Path) -> None:
    a = start(targets, tmp_path)
    assert a.rpc("ublk_create_target") is True
    malloc(a, "malloc0", 32)
    assert a.cli("ublk_start_disk", "malloc0", "1", "-q", "2", "-d", "128").stdout.strip() == "1"
    direct_write("/dev/ublkb1", 0, b"\x22" * 65536)

    done = threading.Event()
    outcome: dict[str, object] = {}

    def io_after_kill() -> None:
        try:
            # Issued while no server runs: the kernel queues it until recovery ends.
            direct_write("/dev/ublkb1", MiB, b"\x33" * 65536)
            outcome["read"] = direct_read("/dev/ublkb1", MiB, 65536)
        except OSError as e:
            outcome["error"] = e.errno
        done.set()

    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(30)
    assert is_blockdev("/dev/ublkb1"), "the device must survive its server (USER_RECOVERY)"
    th = threading.Thread(target=io_after_kill, daemon=True)
    th.start()
    time.sleep(1)
    assert not done.is_set(), "I/O completed without a server"

    b = start(targets, tmp_path)
    assert b.rpc("ublk_create_target") is True
    malloc(b, "malloc0", 32)
    assert b.cli("ublk_recover_disk", "malloc0", "1").stdout.strip() == "1"
    assert done.wait(60), "I/O did not resume after ublk_recover_disk"
    assert "error" not in outcome, outcome
    assert outcome["read"] == b"\x33" * 65536
    wait_for(lambda: b.rpc("ublk_get_disks")[0]["num_queues"] == 2, what="listed")
    direct_write("/dev/ublkb1", 2 * MiB, b"\x44" * 4096)
    assert direct_read("/dev/ublkb1", 2 * MiB, 4096) == b"\x44" * 4096
    # A recovered device is saved like a started one.
    cfg = b.rpc("framework_get_config", {"name": "ublk"})
    assert cfg[1] == {"method": "ublk_start_disk", "params": {
        "bdev_name": "malloc0", "ublk_id": 1, "num_queues": 2, "queue_depth": 128}}
    assert b.rpc("ublk_stop_disk", {"ublk_id": 1}) is True
    assert b.rpc("ublk_destroy_target") is True
    assert not os.path.exists("/dev/ublkb1")


# -- config round trip ------------------------------------------------------------------
def test_config_round_trip(targets: list[Target], tmp_path: Path) -> None:
    a = start(targets, tmp_path)
    assert a.rpc("ublk_create_target", {"cpumask": "0x3"}) is True
    malloc(a, "malloc0", 32)
    assert a.rpc("ublk_start_disk", {"bdev_name": "malloc0", "ublk_id": 0,
                                     "num_queues": 2, "queue_depth": 64}) == 0
    direct_write("/dev/ublkb0", 0, b"\x77" * 4096)
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(a.cli("save_config").stdout)
    saved = json.loads(cfg_path.read_text())
    ublk = next(s for s in saved["subsystems"] if s["subsystem"] == "ublk")["config"]
    assert ublk == [
        {"method": "ublk_create_target", "params": {"cpumask": "3"}},
        {"method": "ublk_start_disk", "params": {"bdev_name": "malloc0", "ublk_id": 0,
                                                 "num_queues": 2, "queue_depth": 64}},
    ]
    assert a.stop(timeout=60) == 0
    assert not os.path.exists("/dev/ublkb0"), "shutdown must stop every device"

    b = start(targets, tmp_path, "--json", str(cfg_path))
    disks = b.rpc("ublk_get_disks")
    assert disks[0]["ublk_device"] == "/dev/ublkb0"
    assert is_blockdev("/dev/ublkb0")
    assert json.loads(b.cli("save_config").stdout) == saved
    assert b.rpc("ublk_destroy_target") is True


# -- bad input --------------------------------------------------------------------------
def test_bad_input(targets: list[Target], tmp_path: Path) -> None:
    t = start(targets, tmp_path)
    malloc(t, "Malloc0", 16)
    # no target
    assert t.rpc_error("ublk_start_disk", {"bdev_name": "Malloc0", "ublk_id": 0})["code"] == -19
    assert t.rpc_error("ublk_stop_disk", {"ublk_id": 0})["code"] == -19
    assert t.rpc_error("ublk_recover_disk", {"bdev_name": "Malloc0", "ublk_id": 0}
                       )["code"] == -19
    err = t.rpc_error("ublk_destroy_target")
    assert (err["code"], err["message"].split(":")[0]) == (-32603, "No such file or directory")
    # bad create params
    for params in ({"cpumask": ""}, {"cpumask": "0x4"}, {"cpumask": "zz"},
                   {"cpumask": 3}, {"bogus": 1}):
        err = t.rpc_error("ublk_create_target", params)
        assert (err["code"], err["message"].split(":")[0]) == (-32603, "Invalid argument"), params
    assert t.rpc("ublk_create_target", {"cpumask": "[0,1]"}) is True
    err = t.rpc_error("ublk_create_target")
    assert (err["code"], err["message"].split(":")[0]) == (-32603, "Device or resource busy")
    # decode failures
    for params in ({"ublk_id": 0}, {"bdev_name": "Malloc0", "ublk_id": "0"},
                   {"bdev_name": "Malloc0", "ublk_id": -1}):
        err = t.rpc_error("ublk_start_disk", params)
        assert err["code"] == -32603 and err["message"].startswith(
            "spdk_json_decode_object failed"), params
    # bdev missing
    assert t.rpc_error("ublk_start_disk", {"bdev_name": "nope", "ublk_id": 0})["code"] == -19
    assert t.rpc("ublk_get_disks") == []
    # id in use
    assert t.rpc("ublk_start_disk", {"bdev_name": "Malloc0", "ublk_id": 0}) == 0
    malloc(t, "Malloc1", 16)
    assert t.rpc_error("ublk_start_disk", {"bdev_name": "Malloc1", "ublk_id": 0})["code"] == -16
    # unknown id
    assert t.rpc_error("ublk_stop_disk", {"ublk_id": 9})["code"] == -19
    assert t.rpc_error("ublk_get_disks", {"ublk_id": 9})["code"] == -19
    # the limits: at them, and beyond (clamped, as SPDK)
    assert t.rpc("ublk_start_disk", {"bdev_name": "Malloc1", "ublk_id": 1,
                                     "num_queues": 32, "queue_depth": 1024}) == 1
    malloc(t, "Malloc2", 16)
    assert t.rpc("ublk_start_disk", {"bdev_name": "Malloc2", "ublk_id": 2,
                                     "num_queues": 33, "queue_depth": 4096}) == 2
    d = t.rpc("ublk_get_disks", {"ublk_id": 2})[0]
    assert (d["num_queues"], d["queue_depth"]) == (32, 1024)
    direct_write("/dev/ublkb2", 0, b"\x01" * MiB)
    assert direct_read("/dev/ublkb2", 0, MiB) == b"\x01" * MiB
    # zero queues: the kernel refuses, the device is cleaned up everywhere
    malloc(t, "Malloc3", 16)
    err = t.rpc_error("ublk_start_disk", {"bdev_name": "Malloc3", "ublk_id": 3,
                                          "num_queues": 0})
    assert err["code"] < 0 and err["code"] != -32603, err
    assert [d["id"] for d in t.rpc("ublk_get_disks")] == [0, 1, 2]
    assert not os.path.exists("/dev/ublkb3") and not os.path.exists("/dev/ublkc3")
    # the id is free again
    assert t.rpc("ublk_start_disk", {"bdev_name": "Malloc3", "ublk_id": 3}) == 3
    assert t.rpc("ublk_destroy_target", timeout=120) is True
    assert not any(os.path.exists(f"/dev/ublkb{i}") for i in range(4))
