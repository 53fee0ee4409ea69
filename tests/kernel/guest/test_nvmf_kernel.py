"""Guest half: the Linux kernel's NVMe/TCP initiator and nvme-cli against pybdev's target
(issue 16's "checked by" list, the first part): discover, connect (size, serial, model),
discard, fio with crc32c verification at 4 KiB QD32 and 128 KiB, mkfs.ext4 and a file that
survives a disconnect/connect with header and data digests, a namespace added and removed
while connected, and a host NQN that is not allowed.  Then, with a second target: the
bdev deleted under fio (I/O errors, no hung task) and kill -9 of the target while fio runs
(``nvme disconnect`` still returns).  Keep-alive expiry is checked on the host with the
test initiator (tests/nvmf/test_tcp.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import Target, wait_until

NQN = "nqn.2016-06.io.spdk:cnode1"


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=300)
    if check and res.returncode:
        raise AssertionError(f"{cmd}: {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def nvme_disks() -> dict[str, str]:
    """NAME -> SIZE of the nvme block devices."""
    out = sh("lsblk -dn -b -o NAME,SIZE").stdout.split("\n")
    return {n: s for n, s in (line.split() for line in out if line.startswith("nvme"))}


def disk_of_nsid(nsid: int) -> str | None:
    """The block device of NSID ``nsid``: the kernel names a namespace nvme<S>n<I> with I
    in the order its (parallel) scan reached it, not after the NSID, so nvme0n2 may well be
    NSID 1 (``nvme_alloc_ns_head`` in the kernel's drivers/nvme/host/core.c)."""
    for name in nvme_disks():
        attr = Path(f"/sys/block/{name}/nsid")
        if attr.exists() and int(attr.read_text()) == nsid:
            return name
    return None


def test_kernel_initiator(targets: list[Target], tmp_path: Path) -> None:
    sh("ip link set lo up")
    sh("modprobe nvme-tcp")
    sh("modprobe crc32c_generic", check=False)
    t = Target(tmp_path / "s.sock", [], tmp_path / "t.log").wait_ready(timeout=120)
    targets.append(t)
    t.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 131072, "block_size": 512})
    t.cli("nvmf_create_transport", "-t", "tcp")
    t.cli("nvmf_create_subsystem", NQN, "-a", "-s", "PYBDEVKERNEL1", "-d", "pybdev kernel")
    t.cli("nvmf_subsystem_add_ns", NQN, "Malloc0")
    t.cli("nvmf_subsystem_add_listener", NQN, "-t", "tcp", "-a", "127.0.0.1", "-s", "4420")
    t.cli("nvmf_subsystem_add_listener", "discovery", "-t", "tcp", "-a", "127.0.0.1",
          "-s", "4420")
    out = sh("nvme discover -t tcp -a 127.0.0.1 -s 4420").stdout
    assert f"subnqn:  {NQN}" in out and "current discovery subsystem" in out

    sh(f"nvme connect -t tcp -a 127.0.0.1 -s 4420 -n {NQN}")
    wait_until(lambda: "nvme0n1" in nvme_disks(), timeout=30, what="nvme0n1")
    assert nvme_disks()["nvme0n1"] == str(64 << 20)
    line = sh("lsblk -dn -o NAME,SERIAL,MODEL /dev/nvme0n1").stdout
    assert "PYBDEVKERNEL1" in line and "pybdev kernel" in line
    dev = "/dev/nvme0n1"
    sh(f"blkdiscard {dev}")
    fio = (f"fio --name=v --filename={dev} --direct=1 --ioengine=libaio --verify=crc32c "
           "--do_verify=1 --output-format=terse")
    sh(f"{fio} --rw=randwrite --bs=4k --iodepth=32 --size=16M")
    sh(f"{fio} --rw=write --bs=128k --iodepth=8 --size=32M")
    sh(f"mkfs.ext4 -q {dev} && mkdir -p /mnt/x && mount {dev} /mnt/x && "
       "echo survived > /mnt/x/f && umount /mnt/x")

    t.rpc("bdev_malloc_create", {"name": "Malloc1", "num_blocks": 8192, "block_size": 4096})
    t.cli("nvmf_subsystem_add_ns", NQN, "Malloc1")
    wait_until(lambda: "nvme0n2" in nvme_disks(), timeout=30, what="the added namespace")
    t.cli("nvmf_subsystem_remove_ns", NQN, "2")
    wait_until(lambda: "nvme0n2" not in nvme_disks(), timeout=30, what="the namespace gone")

    sh(f"nvme disconnect -n {NQN}")
    wait_until(lambda: t.rpc("nvmf_subsystem_get_controllers", {"nqn": NQN}) == [],
               timeout=30, what="the controller gone")
    sh(f"nvme connect -t tcp -a 127.0.0.1 -s 4420 -n {NQN} -g -G")
    wait_until(lambda: "nvme0n1" in nvme_disks(), timeout=30, what="nvme0n1 again")
    time.sleep(1)
    assert sh(f"mount {dev} /mnt/x && cat /mnt/x/f && umount /mnt/x").stdout == "survived\n"
    sh(f"dd if=/dev/urandom of={tmp_path}/a bs=64k count=16 status=none && "
       f"dd if={tmp_path}/a of={dev} bs=64k oflag=direct status=none && "
       f"dd if={dev} of={tmp_path}/b bs=64k count=16 iflag=direct status=none && "
       f"cmp {tmp_path}/a {tmp_path}/b")
    sh(f"nvme disconnect -n {NQN}")

    t.cli("nvmf_subsystem_allow_any_host", NQN, "--no-allow-any-host")
    refused = sh(f"nvme connect -t tcp -a 127.0.0.1 -s 4420 -n {NQN}", check=False)
    assert refused.returncode != 0
    assert "is not allowed" in sh("dmesg").stdout


HUNG = ("hung task", "blocked for more than")


def fio_background(dev: str, runtime: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["fio", "--name=bg", f"--filename={dev}", "--direct=1", "--ioengine=libaio",
         "--rw=randrw", "--bs=4k", "--iodepth=16", "--time_based", f"--runtime={runtime}",
         "--output-format=terse"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_bdev_deleted_under_fio_and_target_killed(targets: list[Target],
                                                  tmp_path: Path) -> None:
    sh("ip link set lo up")
    sh("modprobe nvme-tcp")
    hung_knob = Path("/proc/sys/kernel/hung_task_timeout_secs")
    if hung_knob.exists():  # report a stuck task within the test, not after 120 s
        hung_knob.write_text("5\n")
    sh("dmesg -C")
    t = Target(tmp_path / "s.sock", [], tmp_path / "t.log").wait_ready(timeout=120)
    targets.append(t)
    t.rpc("bdev_malloc_create", {"name": "Keep", "num_blocks": 32768, "block_size": 512})
    t.rpc("bdev_malloc_create", {"name": "Doomed", "num_blocks": 32768, "block_size": 512})
    t.cli("nvmf_create_transport", "-t", "tcp")
    t.cli("nvmf_create_subsystem", NQN, "-a")
    t.cli("nvmf_subsystem_add_ns", NQN, "Keep")
    t.cli("nvmf_subsystem_add_ns", NQN, "Doomed")
    t.cli("nvmf_subsystem_add_listener", NQN, "-t", "tcp", "-a", "127.0.0.1", "-s", "4421")
    sh(f"nvme connect -t tcp -a 127.0.0.1 -s 4421 -n {NQN} --ctrl-loss-tmo=5 "
       "--reconnect-delay=1")
    wait_until(lambda: disk_of_nsid(1) and disk_of_nsid(2), timeout=30,
               what="two namespaces")
    keep, doomed = f"/dev/{disk_of_nsid(1)}", f"/dev/{disk_of_nsid(2)}"

    def doomed_ops() -> int:
        (st,) = t.rpc("bdev_get_iostat", {"name": "Doomed"})["bdevs"]
        return int(st["num_read_ops"] + st["num_write_ops"])

    # the bdev deleted under fio: the namespace goes, fio gets errors and ends.  fio must
    # be doing I/O to the bdev first (its start takes seconds under emulation).
    fio = fio_background(doomed, 60)
    wait_until(lambda: doomed_ops() > 64 or fio.poll() is not None, timeout=40,
               what="fio's I/O reaching the Doomed bdev")
    assert fio.poll() is None, fio.communicate()
    t.rpc("bdev_malloc_delete", {"name": "Doomed"})
    try:
        out, err = fio.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        fio.kill()
        raise AssertionError(f"fio hung after the bdev was deleted:\n{sh('dmesg').stdout}"
                             ) from None
    # terse v3: field 5 is the job's error; fio also exits non-zero on an I/O error
    fields = out.strip().split(";")
    job_err = int(fields[4]) if len(fields) > 4 and fields[4].isdigit() else None
    assert fio.returncode != 0 and job_err != 0, (
        f"fio saw no error on a deleted namespace ({doomed}): rc {fio.returncode}, "
        f"job error {job_err}\nstdout: {out}\nstderr: {err}\ndmesg: {sh('dmesg').stdout}")
    wait_until(lambda: disk_of_nsid(2) is None, timeout=30, what="NSID 2's disk gone")
    assert not Path(doomed).exists() or subprocess.run(
        ["dd", f"if={doomed}", "of=/dev/null", "bs=4k", "count=1", "iflag=direct"],
        capture_output=True, timeout=60).returncode != 0
    assert [n["nsid"] for n in t.rpc("nvmf_get_subsystems", {"nqn": NQN})[0]["namespaces"]] \
        == [1]
    assert f"/dev/{disk_of_nsid(1)}" == keep
    sh(f"dd if={keep} of=/dev/null bs=64k count=16 iflag=direct status=none")

    # kill -9 of the target under fio: errors after ctrl-loss-tmo, and disconnect returns
    fio = fio_background(keep, 120)
    time.sleep(3)
    os.kill(t.proc.pid, signal.SIGKILL)
    t.proc.wait(30)
    try:
        fio.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        fio.kill()
        raise AssertionError(f"fio hung after the target died:\n{sh('dmesg').stdout}") from None
    assert fio.returncode != 0
    res = subprocess.run(["nvme", "disconnect", "-n", NQN], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 or "nvme0" not in sh("ls /sys/class/nvme", check=False).stdout
    wait_until(lambda: not nvme_disks(), timeout=30, what="no nvme disk left")
    time.sleep(6)  # one hung-task check period
    dmesg = sh("dmesg").stdout
    assert not [line for line in dmesg.splitlines() if any(h in line for h in HUNG)], dmesg


KNQN = "nqn.2024-01.io.pybdev:kernel-target"
NVMET = "/sys/kernel/config/nvmet"


def test_initiator_bdev_against_kernel_target(targets: list[Target], tmp_path: Path) -> None:
    """Issue 17: pybdev's NVMe/TCP initiator (bdev_nvme_attach_controller) against the
    kernel's nvmet-tcp target configured through configfs, data checked with fio through
    the kernel NBD export of the namespace bdev and read back from the target's device."""
    sh("ip link set lo up")
    sh("modprobe crc32c_generic", check=False)
    sh("modprobe null_blk nr_devices=1 gb=1 bs=4096 memory_backed=1")
    sh("modprobe nvmet-tcp")
    if not Path(NVMET).exists():
        sh("mount -t configfs none /sys/kernel/config")
    sub, port = f"{NVMET}/subsystems/{KNQN}", f"{NVMET}/ports/7"
    sh(f"mkdir {sub} && echo 1 > {sub}/attr_allow_any_host && "
       f"echo PYBDEVNVMET1 > {sub}/attr_serial && mkdir {sub}/namespaces/1 && "
       f"echo /dev/nullb0 > {sub}/namespaces/1/device_path && "
       f"echo 1 > {sub}/namespaces/1/enable && mkdir {port} && "
       f"echo 127.0.0.1 > {port}/addr_traddr && echo tcp > {port}/addr_trtype && "
       f"echo 4421 > {port}/addr_trsvcid && echo ipv4 > {port}/addr_adrfam && "
       f"ln -s {sub} {port}/subsystems/{KNQN}")
    t = Target(tmp_path / "i.sock", [], tmp_path / "i.log").wait_ready(timeout=120)
    targets.append(t)
    assert t.cli("bdev_nvme_attach_controller", "-b", "K", "-t", "tcp", "-a", "127.0.0.1",
                 "-f", "ipv4", "-s", "4421", "-n", KNQN, "-e", "-d").stdout.split() == ["Kn1"]
    (bdev,) = t.rpc("bdev_get_bdevs", {"name": "Kn1"})
    assert (bdev["block_size"], bdev["num_blocks"]) == (4096, (1 << 30) // 4096)
    assert bdev["driver_specific"]["nvme"][0]["ctrlr_data"]["serial_number"] == "PYBDEVNVMET1"
    t.rpc("nbd_start_disk", {"bdev_name": "Kn1", "nbd_device": "/dev/nbd0"})
    dev = "/dev/nbd0"
    fio = (f"fio --name=v --filename={dev} --direct=1 --ioengine=libaio --verify=crc32c "
           "--do_verify=1 --output-format=terse")
    sh(f"{fio} --rw=randwrite --bs=4k --iodepth=32 --size=4M")
    sh(f"{fio} --rw=write --bs=128k --iodepth=8 --size=16M --offset=64M")
    sh(f"dd if=/dev/urandom of={tmp_path}/a bs=64k count=16 status=none && "
       f"dd if={tmp_path}/a of={dev} bs=64k seek=2048 oflag=direct status=none && "
       f"dd if=/dev/nullb0 of={tmp_path}/b bs=64k skip=2048 count=16 iflag=direct "
       f"status=none && cmp {tmp_path}/a {tmp_path}/b")
    t.rpc("nbd_stop_disk", {"nbd_device": dev})
    t.cli("bdev_nvme_detach_controller", "K")
    assert t.rpc("bdev_get_bdevs") == []
    sh(f"rm {port}/subsystems/{KNQN} && echo 0 > {sub}/namespaces/1/enable && "
       f"rmdir {sub}/namespaces/1 {port} {sub}")
