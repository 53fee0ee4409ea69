"""The kernel NBD export on a real kernel: runs inside the kernel VM
(``tests/kernel/test_nbd_kernel.py``).

``python -m pybdev`` is started here as a subprocess and driven over its RPC socket with
pybdev's client, ``scripts/rpc.py`` and SPDK's ``spdk-rpc``: start with and without a
device, data through O_DIRECT, ext4, stop, busy devices, hot-remove under I/O, SIGKILL of
the target, a config round trip through ``--json``, and logical volumes: SPDK's
``nbd_with_lvol_verify`` (``test/bdev/nbd_common.sh``) and ext4 on an lvol snapshotted while
mounted, its clone mounted from a second device.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import signal
import subprocess
import threading
from pathlib import Path

from tests.conftest import Target
from tests.kernel.guest.blockdev import MiB, dev_size, lvol_fs_snapshot_clone, start, wait_for

SIZE = 64 * MiB


def malloc(t: Target, name: str, size: int = SIZE, block_size: int = 512) -> None:
    assert t.rpc("bdev_malloc_create", {"name": name, "num_blocks": size // block_size,
                                        "block_size": block_size}) == name


def sys_int(dev: str, attr: str) -> int:
    try:
        return int(Path(f"/sys/block/{os.path.basename(dev)}/{attr}").read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def connected(dev: str) -> bool:
    return Path(f"/sys/block/{os.path.basename(dev)}/pid").exists()


def is_free(dev: str) -> bool:
    return not connected(dev) and sys_int(dev, "size") == 0


def direct_round_trip(dev: str, length: int = 4 * MiB, offset: int = 0) -> None:
    """Write random data with O_DIRECT, read it back the same way, compare."""
    wbuf = mmap.mmap(-1, length)
    rbuf = mmap.mmap(-1, length)
    pattern = os.urandom(length)
    wbuf[:] = pattern
    fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
    try:
        assert os.pwritev(fd, [wbuf], offset) == length
        os.fsync(fd)
        assert os.preadv(fd, [rbuf], offset) == length
    finally:
        os.close(fd)
    assert rbuf[:] == pattern


def stop_and_wait_free(t: Target, dev: str) -> None:
    assert t.rpc("nbd_stop_disk", {"nbd_device": dev}) is True
    wait_for(lambda: is_free(dev), 20, f"{dev} to be free")
    assert t.rpc("nbd_get_disks") == []


# ---------------------------------------------------------------------------------------------


def test_start_data_stop_busy(targets: list[Target], tmp_path: Path) -> None:
    t = start(targets, tmp_path)
    malloc(t, "Malloc0")
    malloc(t, "Malloc1", 16 * MiB)
    assert t.rpc("nbd_start_disk", {"bdev_name": "Malloc0", "nbd_device": "/dev/nbd0"}) == \
        "/dev/nbd0"
    # Usable as soon as the answer arrives.
    assert connected("/dev/nbd0")
    assert dev_size("/dev/nbd0") == SIZE
    assert t.rpc("nbd_get_disks") == [{"nbd_device": "/dev/nbd0", "bdev_name": "Malloc0"}]
    assert t.rpc("nbd_get_disks", {"nbd_device": "/dev/nbd0"}) == \
        [{"nbd_device": "/dev/nbd0", "bdev_name": "Malloc0"}]
    direct_round_trip("/dev/nbd0")
    direct_round_trip("/dev/nbd0", offset=SIZE - 4 * MiB)
    # Busy: exported by this target, then connected by another process.
    err = t.rpc_error("nbd_start_disk", {"bdev_name": "Malloc1", "nbd_device": "/dev/nbd0"})
    assert err["code"] == -errno.EBUSY, err
    other = start(targets, tmp_path)
    malloc(other, "Malloc9", 16 * MiB)
    err = other.rpc_error("nbd_start_disk", {"bdev_name": "Malloc9", "nbd_device": "/dev/nbd0"})
    assert err["code"] == -errno.EBUSY, err
    # Bad inputs
    err = t.rpc_error("nbd_start_disk", {"bdev_name": "Malloc1", "nbd_device": "/dev/nbd0p1"})
    assert err["code"] == -errno.ENODEV and "illegal nbd device" in err["message"], err
    err = t.rpc_error("nbd_start_disk", {"bdev_name": "Nope", "nbd_device": "/dev/nbd3"})
    assert err["code"] == -errno.ENODEV, err
    assert is_free("/dev/nbd3")
    err = t.rpc_error("nbd_stop_disk", {"nbd_device": "/dev/nbd3"})
    assert err["code"] == -errno.ENODEV, err
    # Stop frees it; a new start on it works.
    stop_and_wait_free(t, "/dev/nbd0")
    assert t.rpc("nbd_start_disk", {"bdev_name": "Malloc1", "nbd_device": "/dev/nbd0"}) == \
        "/dev/nbd0"
    assert dev_size("/dev/nbd0") == 16 * MiB
    direct_round_trip("/dev/nbd0", MiB)
    stop_and_wait_free(t, "/dev/nbd0")
    # Nothing holds the bdevs any more.
    assert t.rpc("bdev_malloc_delete", {"name": "Malloc1"}) is True


def test_auto_pick_and_clients(targets: list[Target], tmp_path: Path) -> None:
    t = start(targets, tmp_path)
    for i in range(3):
        malloc(t, f"Malloc{i}", 16 * MiB, 4096)
    # Another process holds nbd0: auto-pick skips it.
    other = start(targets, tmp_path)
    malloc(other, "Other0", 16 * MiB)
    assert other.rpc("nbd_start_disk", {"bdev_name": "Other0", "nbd_device": "/dev/nbd0"}) == \
        "/dev/nbd0"
    assert t.rpc("nbd_start_disk", {"bdev_name": "Malloc0"}) == "/dev/nbd1"
    # SPDK's own client and ours, as a user types them.
    out = t.spdk("nbd_start_disk", "Malloc1").stdout.strip()
    assert out == "/dev/nbd2", out
    out = t.cli("nbd_start_disk", "Malloc2", "/dev/nbd5").stdout.strip()
    assert out == "/dev/nbd5", out
    disks = json.loads(t.spdk("nbd_get_disks").stdout)
    assert disks == [{"nbd_device": "/dev/nbd1", "bdev_name": "Malloc0"},
                     {"nbd_device": "/dev/nbd2", "bdev_name": "Malloc1"},
                     {"nbd_device": "/dev/nbd5", "bdev_name": "Malloc2"}]
    assert json.loads(t.cli("nbd_get_disks", "-n", "/dev/nbd2").stdout) == [disks[1]]
    for dev in ("/dev/nbd1", "/dev/nbd2", "/dev/nbd5"):
        assert dev_size(dev) == 16 * MiB
        assert sys_int(dev, "queue/logical_block_size") == 4096
        direct_round_trip(dev, MiB)
    bad = t.spdk("nbd_start_disk", "Malloc0", "/dev/nbd5", check=False)
    assert bad.returncode != 0 and "-16" in bad.stdout + bad.stderr, bad
    t.spdk("nbd_stop_disk", "/dev/nbd2")
    t.cli("nbd_stop_disk", "/dev/nbd5")
    wait_for(lambda: is_free("/dev/nbd2") and is_free("/dev/nbd5"), 20, "stopped devices")
    assert t.rpc("nbd_get_disks") == [disks[0]]
    # The freed nbd2 is the first free one again.
    assert t.rpc("nbd_start_disk", {"bdev_name": "Malloc1"}) == "/dev/nbd2"


def test_several_connections(targets: list[Target], tmp_path: Path) -> None:
    t = start(targets, tmp_path)
    malloc(t, "Malloc0")
    dev = "/dev/nbd6"
    assert t.cli("nbd_start_disk", "Malloc0", dev, "-c", "4").stdout.strip() == dev
    assert t.rpc("nbd_get_disks") == [{"nbd_device": dev, "bdev_name": "Malloc0",
                                       "num_connections": 4}]
    # The driver took the sockets: one hardware queue each, at most one per CPU (blk-mq
    # caps the queues at the CPU count; the sockets beyond stay spare).
    assert len(list(Path("/sys/block/nbd6/mq").iterdir())) == min(4, os.cpu_count() or 1) > 1
    direct_round_trip(dev)
    # Two fio processes (one per vCPU, so requests leave on more than one socket), each
    # verifying its own half with checksums.
    res = subprocess.run(
        ["fio", "--name=v", f"--filename={dev}", "--direct=1", "--ioengine=libaio",
         "--rw=randwrite", "--bs=4k", "--iodepth=16", "--numjobs=2", "--size=16M",
         "--offset_increment=32M", "--verify=crc32c", "--do_verify=1",
         "--output-format=terse"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    nbd = next(s for s in json.loads(t.cli("save_config").stdout)["subsystems"]
               if s["subsystem"] == "nbd")
    assert nbd["config"] == [{"method": "nbd_start_disk", "params": {
        "nbd_device": dev, "bdev_name": "Malloc0", "num_connections": 4}}]
    stop_and_wait_free(t, dev)
    # One socket again on the same device: the driver forgot the four.
    assert t.rpc("nbd_start_disk", {"bdev_name": "Malloc0", "nbd_device": dev}) == dev
    assert len(list(Path("/sys/block/nbd6/mq").iterdir())) == 1
    direct_round_trip(dev, MiB)
    stop_and_wait_free(t, dev)


def test_ext4(targets: list[Target], tmp_path: Path) -> None:
    t = start(targets, tmp_path)
    malloc(t, "Malloc0")
    dev = t.rpc("nbd_start_disk", {"bdev_name": "Malloc0", "nbd_device": "/dev/nbd4"})
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["modprobe", "ext4"], check=True, timeout=60)  # no auto-load in the VM
    subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True, timeout=120)
    payload = os.urandom(3 * MiB + 123)
    subprocess.run(["mount", "-t", "ext4", dev, str(mnt)], check=True, timeout=60)
    try:
        (mnt / "file.bin").write_bytes(payload)
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=60)
    subprocess.run(["mount", "-t", "ext4", "-o", "ro", dev, str(mnt)], check=True, timeout=60)
    try:
        assert (mnt / "file.bin").read_bytes() == payload
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=60)
    stop_and_wait_free(t, dev)


def test_lvol_nbd_with_lvol_verify(targets: list[Target], tmp_path: Path) -> None:
    """SPDK's ``nbd_with_lvol_verify``, with SPDK's rpc.py: mkfs.ext4 on an exported lvol."""
    t = start(targets, tmp_path)
    t.spdk("bdev_malloc_create", "-b", "malloc_lvol_verify", "16", "512")
    t.spdk("bdev_lvol_create_lvstore", "malloc_lvol_verify", "lvs")
    t.spdk("bdev_lvol_create", "lvol", "4", "-l", "lvs")
    dev = "/dev/nbd10"
    assert t.spdk("nbd_start_disk", "lvs/lvol", dev).stdout.strip() == dev
    # wait_for_nbd_set_capacity
    wait_for(lambda: sys_int(dev, "size") > 0, 30, f"{dev} to get its capacity")
    assert sys_int(dev, "size") * 512 == 4 * MiB
    subprocess.run(["mkfs.ext4", "-F", dev], check=True, timeout=120, capture_output=True)
    t.spdk("nbd_stop_disk", dev)
    wait_for(lambda: is_free(dev), 20, f"{dev} to be free")
    assert t.rpc("nbd_get_disks") == []
    # What mkfs wrote is on the lvol: its superblock magic (0xEF53 at 1024 + 56).
    uri = t.rpc("nbd_start_disk", {"bdev_name": "lvs/lvol", "nbd_device": dev})
    fd = os.open(uri, os.O_RDONLY)
    try:
        assert os.pread(fd, 2, 1024 + 56) == b"\x53\xef"
    finally:
        os.close(fd)
    stop_and_wait_free(t, dev)


def test_lvol_fs_snapshot_clone(targets: list[Target], tmp_path: Path) -> None:
    t = start(targets, tmp_path)

    def start_disk(bdev: str) -> str:
        dev = "/dev/nbd11" if bdev == "lvs/vol" else "/dev/nbd12"
        got: str = t.rpc("nbd_start_disk", {"bdev_name": bdev, "nbd_device": dev})
        return got

    lvol_fs_snapshot_clone(t, tmp_path, start_disk, lambda dev: stop_and_wait_free_one(t, dev))


def stop_and_wait_free_one(t: Target, dev: str) -> None:
    assert t.rpc("nbd_stop_disk", {"nbd_device": dev}) is True
    wait_for(lambda: is_free(dev), 20, f"{dev} to be free")


def test_hot_remove_under_io(targets: list[Target], tmp_path: Path) -> None:
    t = start(targets, tmp_path)
    malloc(t, "Malloc0")
    dev = t.rpc("nbd_start_disk", {"bdev_name": "Malloc0", "nbd_device": "/dev/nbd6"})
    done_ios = [0]
    failure: list[BaseException] = []
    stop = threading.Event()

    def io_loop() -> None:
        buf = mmap.mmap(-1, MiB)
        buf[:] = os.urandom(MiB)
        fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
        try:
            while not stop.is_set():
                off = (done_ios[0] % 60) * MiB
                os.pwritev(fd, [buf], off)
                os.preadv(fd, [buf], off)
                done_ios[0] += 1
        except OSError as e:
            failure.append(e)
        finally:
            os.close(fd)

    th = threading.Thread(target=io_loop, daemon=True)
    th.start()
    wait_for(lambda: done_ios[0] >= 5 or bool(failure), 60, "I/O to run")
    assert not failure, failure
    assert t.rpc("bdev_malloc_delete", {"name": "Malloc0"}, timeout=60) is True
    th.join(60)
    stop.set()
    assert not th.is_alive(), "I/O on a hot-removed export hangs"
    assert failure and isinstance(failure[0], OSError), f"I/O did not fail ({done_ios[0]} ok)"
    wait_for(lambda: t.rpc("nbd_get_disks") == [], 20, "the export to go")
    wait_for(lambda: is_free(dev), 30, f"{dev} to be free")
    # The target still serves, and the device can be exported again.
    malloc(t, "Malloc1", 16 * MiB)
    assert t.rpc("nbd_start_disk", {"bdev_name": "Malloc1", "nbd_device": dev}) == dev
    direct_round_trip(dev, MiB)
    stop_and_wait_free(t, dev)


def test_sigkill_then_restart(targets: list[Target], tmp_path: Path) -> None:
    t = start(targets, tmp_path)
    malloc(t, "Malloc0")
    dev = t.rpc("nbd_start_disk", {"bdev_name": "Malloc0", "nbd_device": "/dev/nbd7"})
    direct_round_trip(dev, MiB)
    t.proc.send_signal(signal.SIGKILL)
    t.proc.wait(30)
    # I/O now fails promptly instead of hanging until the 60 s NBD timeout (or forever).
    result: list[object] = []

    def probe() -> None:
        buf = mmap.mmap(-1, 4096)
        try:
            fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
        except OSError as e:
            result.append(e)
            return
        try:
            os.preadv(fd, [buf], 0)
            result.append("read ok")
        except OSError as e:
            result.append(e)
        finally:
            os.close(fd)

    th = threading.Thread(target=probe, daemon=True)
    th.start()
    th.join(90)
    assert not th.is_alive(), "I/O hangs after the target was killed"
    assert (result and isinstance(result[0], OSError)) or is_free(dev), result
    wait_for(lambda: is_free(dev), 90, f"{dev} to be released after SIGKILL")
    t2 = start(targets, tmp_path)
    malloc(t2, "Malloc0")
    assert t2.rpc("nbd_start_disk", {"bdev_name": "Malloc0", "nbd_device": dev}) == dev
    direct_round_trip(dev, MiB)
    stop_and_wait_free(t2, dev)


def test_config_round_trip_and_shutdown(targets: list[Target], tmp_path: Path) -> None:
    t = start(targets, tmp_path)
    malloc(t, "Malloc0", 32 * MiB)
    malloc(t, "Malloc1", 8 * MiB, 4096)
    t.rpc("nbd_start_disk", {"bdev_name": "Malloc0", "nbd_device": "/dev/nbd8"})
    t.rpc("nbd_start_disk", {"bdev_name": "Malloc1", "nbd_device": "/dev/nbd9"})
    config = json.loads(t.cli("save_config").stdout)
    nbd = next(s for s in config["subsystems"] if s["subsystem"] == "nbd")
    assert nbd["config"] == [
        {"method": "nbd_start_disk", "params": {"nbd_device": "/dev/nbd8", "bdev_name": "Malloc0"}},
        {"method": "nbd_start_disk", "params": {"nbd_device": "/dev/nbd9", "bdev_name": "Malloc1"}},
    ]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    # Shutdown stops every device it started.
    assert t.stop(signal.SIGTERM, timeout=60) == 0
    assert is_free("/dev/nbd8") and is_free("/dev/nbd9")
    t2 = start(targets, tmp_path, "--json", str(path))
    assert t2.rpc("nbd_get_disks") == [
        {"nbd_device": "/dev/nbd8", "bdev_name": "Malloc0"},
        {"nbd_device": "/dev/nbd9", "bdev_name": "Malloc1"},
    ]
    assert dev_size("/dev/nbd8") == 32 * MiB and dev_size("/dev/nbd9") == 8 * MiB
    direct_round_trip("/dev/nbd8", MiB)
    again = json.loads(t2.cli("save_config").stdout)
    assert next(s for s in again["subsystems"] if s["subsystem"] == "nbd") == nbd
    assert t2.stop(signal.SIGTERM, timeout=60) == 0
    assert is_free("/dev/nbd8") and is_free("/dev/nbd9")
