"""pybdev's NVMe/TCP target vs the kernel's nvmet-tcp vs pybdev's kernel NBD export.

Runs inside the kernel VM (``tests/kernel/vm.py``): started on the host, it boots the VM
and runs itself there with ``--in-vm``. Inside, three RAM-backed block devices:

* ``pybdev``: a pybdev malloc bdev as namespace 1 of an NVMe/TCP subsystem on
  127.0.0.1:4420, connected with the kernel initiator (``nvme connect``);
* ``nvmet``: the kernel's own NVMe/TCP target (nvmet-tcp, configured through configfs as
  in SPDK's ``configure_kernel_target``) on 127.0.0.1:4421, exporting a memory-backed
  ``null_blk`` device, connected the same way;
* ``nbd``: a second pybdev malloc bdev of the same size through ``nbd_start_disk`` to
  ``/dev/nbd0`` (a namespace claims its bdev, so the NBD export has its own).

fio (libaio, O_DIRECT, 48 MiB range) runs the same jobs on each, interleaved round by
round (``--rounds``, 3 by default); the **median** of the rounds counts. Software
emulation makes absolute numbers meaningless: the results are the ratios pybdev/nvmet
and pybdev/NBD per job. Usage::

    python bench/nvmf_vs_kernel.py [--runtime 5] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import vmbench  # noqa: E402
from bench.vmbench import fio  # noqa: E402

JOBS = vmbench.JOBS
NQN = "nqn.2016-06.io.spdk:bench"
ANCHOR = "nqn.2024-01.io.pybdev:anchor"
CFS = Path("/sys/kernel/config/nvmet")
SIZE_MIB = 64


def sh(cmd: str, check: bool = True) -> str:
    res = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=120)
    if check and res.returncode:
        raise RuntimeError(f"{cmd}: {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res.stdout


def by_serial(serial: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in sh("lsblk -dn -o NAME,SERIAL").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == serial:
                return f"/dev/{parts[0]}"
        time.sleep(0.2)
    raise RuntimeError(f"no block device with serial {serial}")


def nvmet_setup() -> None:
    sh("modprobe null_blk nr_devices=1 gb=1 bs=4096 memory_backed=1")
    sh("modprobe nvmet-tcp")
    if not CFS.exists():
        sh("mount -t configfs none /sys/kernel/config")
    sub = CFS / "subsystems" / ANCHOR
    sub.mkdir()
    (sub / "attr_allow_any_host").write_text("1\n")
    (sub / "attr_serial").write_text("NVMETBENCH1\n")
    ns = sub / "namespaces" / "1"
    ns.mkdir()
    (ns / "device_path").write_text("/dev/nullb0\n")
    (ns / "enable").write_text("1\n")
    port = CFS / "ports" / "1"
    port.mkdir()
    for attr, value in (("addr_traddr", "127.0.0.1"), ("addr_trtype", "tcp"),
                        ("addr_trsvcid", "4421"), ("addr_adrfam", "ipv4")):
        (port / attr).write_text(value + "\n")
    os.symlink(sub, port / "subsystems" / ANCHOR)


def nvmet_teardown() -> None:
    with contextlib.suppress(OSError):
        os.unlink(CFS / "ports" / "1" / "subsystems" / ANCHOR)
        (CFS / "ports" / "1").rmdir()
        (CFS / "subsystems" / ANCHOR / "namespaces" / "1" / "enable").write_text("0\n")
        (CFS / "subsystems" / ANCHOR / "namespaces" / "1").rmdir()
        (CFS / "subsystems" / ANCHOR).rmdir()


def in_vm(opts: argparse.Namespace) -> dict[str, Any]:
    from tests.conftest import Target

    sh("ip link set lo up")
    sh("modprobe nvme-tcp")
    sh("modprobe nbd", check=False)
    tmp = Path(tempfile.mkdtemp())
    t = Target(tmp / "b.sock", [], tmp / "target.log").wait_ready(120)
    devices: dict[str, str] = {}
    notes: list[str] = []
    try:
        blocks = SIZE_MIB * 256
        t.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": blocks,
                                     "block_size": 4096})
        t.rpc("bdev_malloc_create", {"name": "Malloc1", "num_blocks": blocks,
                                     "block_size": 4096})
        t.rpc("nvmf_create_transport", {"trtype": "TCP"})
        t.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True,
                                        "serial_number": "PYBDEVBENCH1"})
        t.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}})
        t.rpc("nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": {
            "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": "4420"}})
        sh(f"nvme connect -t tcp -a 127.0.0.1 -s 4420 -n {NQN}")
        devices["pybdev"] = by_serial("PYBDEVBENCH1")
        try:
            nvmet_setup()
            sh(f"nvme connect -t tcp -a 127.0.0.1 -s 4421 -n {ANCHOR}")
            devices["nvmet"] = by_serial("NVMETBENCH1")
        except Exception as e:
            notes.append(f"kernel nvmet unavailable ({e})")
        try:
            t.rpc("nbd_start_disk", {"bdev_name": "Malloc1", "nbd_device": "/dev/nbd0"})
            devices["nbd"] = "/dev/nbd0"
        except Exception as e:
            notes.append(f"kernel NBD export unavailable ({e})")
        for path in devices.values():
            vmbench.prefill(path)
        runs: dict[str, dict[str, list[dict[str, float]]]] = {
            d: {j: [] for j in JOBS} for d in devices}
        for _ in range(opts.rounds):
            for job, args in JOBS.items():
                for name, path in devices.items():
                    runs[name][job].append(fio(path, args, opts.runtime))
        medians = {d: {j: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
                       for j, rs in jobs.items()} for d, jobs in runs.items()}
        ratios: dict[str, dict[str, float]] = {}
        for other in ("nvmet", "nbd"):
            if other in medians:
                ratios[f"pybdev/{other}"] = {
                    j: medians["pybdev"][j]["iops"] / medians[other][j]["iops"] for j in JOBS}
        return {"medians": medians, "runs": runs, "ratios": ratios, "notes": notes,
                "devices": devices, "runtime_s": opts.runtime, "rounds": opts.rounds,
                "environment": "QEMU TCG guest, 2 vCPUs, kernel 6.12 (emulation: only "
                               "ratios are meaningful)"}
    finally:
        for nqn in (NQN, ANCHOR):
            sh(f"nvme disconnect -n {nqn}", check=False)
        with contextlib.suppress(Exception):
            t.rpc("nbd_stop_disk", {"nbd_device": "/dev/nbd0"}, timeout=60)
        nvmet_teardown()
        t.stop(timeout=60)


def report(data: dict[str, Any]) -> str:
    return vmbench.table(data, ("pybdev", "nvmet", "nbd"), JOBS)


def main() -> int:
    return vmbench.main(__file__, __doc__ or "", in_vm, report, runtime=5,
                        budget=lambda o: len(JOBS) * o.rounds * 3 * (o.runtime + 15) + 300)


if __name__ == "__main__":
    sys.exit(main())
