"""pybdev's NVMe/TCP initiator vs the kernel's, against the same kernel nvmet-tcp target.

Runs inside the kernel VM (``tests/kernel/vm.py``): started on the host, it boots the VM
and runs itself there with ``--in-vm``. Inside, one target: the kernel's nvmet-tcp on
127.0.0.1:4421 exporting a memory-backed ``null_blk`` (configured through configfs by
``bench/nvmf_vs_kernel.py``'s helpers), reached three ways:

* ``kernel``: the kernel's initiator, ``nvme connect`` -> ``/dev/nvmeXnY``;
* ``pybdev-nbd``: pybdev's initiator (``bdev_nvme_attach_controller`` -> ``Kn1``), the bdev
  exported through the kernel NBD driver (``nbd_start_disk`` -> ``/dev/nbd0``);
* ``pybdev-ublk``: the same bdev through ublk (``ublk_start_disk`` -> ``/dev/ublkb0``).

No digests on either initiator. fio (libaio, O_DIRECT, 48 MiB range; the jobs of
``bench/nvmf_vs_kernel.py``) runs on each device, interleaved round by round (``--rounds``,
3 by default); the **median** counts. Software emulation makes absolute numbers
meaningless, so the result is the ratio pybdev/kernel per job. The pybdev paths carry a
hop the kernel's lacks (NBD or ublk in front of pybdev's initiator); results and caveats
are in docs/nvme-initiator.md.
Usage::

    python bench/nvme_initiator_vs_kernel.py [--runtime 8] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import vmbench  # noqa: E402
from bench.nvmf_vs_kernel import ANCHOR, JOBS, by_serial, nvmet_setup, nvmet_teardown, sh  # noqa: E402
from bench.vmbench import fio  # noqa: E402

PYBDEV = ("pybdev-nbd", "pybdev-ublk")


def in_vm(opts: argparse.Namespace) -> dict[str, Any]:
    from tests.conftest import Target

    sh("ip link set lo up")
    sh("modprobe nvme-tcp")
    sh("modprobe nbd", check=False)
    sh("modprobe ublk_drv", check=False)
    tmp = Path(tempfile.mkdtemp())
    nvmet_setup()
    t = Target(tmp / "b.sock", [], tmp / "target.log").wait_ready(120)
    devices: dict[str, str] = {}
    notes: list[str] = []
    try:
        sh(f"nvme connect -t tcp -a 127.0.0.1 -s 4421 -n {ANCHOR}")
        devices["kernel"] = by_serial("NVMETBENCH1")
        names = t.rpc("bdev_nvme_attach_controller", {
            "name": "K", "trtype": "tcp", "traddr": "127.0.0.1", "adrfam": "ipv4",
            "trsvcid": "4421", "subnqn": ANCHOR})
        if names != ["Kn1"]:
            raise RuntimeError(f"attach returned {names}")
        try:
            t.rpc("nbd_start_disk", {"bdev_name": "Kn1", "nbd_device": "/dev/nbd0"})
            devices["pybdev-nbd"] = "/dev/nbd0"
        except Exception as e:
            notes.append(f"kernel NBD export unavailable ({e})")
        try:
            t.rpc("ublk_create_target")
            t.rpc("ublk_start_disk", {"bdev_name": "Kn1", "ublk_id": 0,
                                      "num_queues": 1, "queue_depth": 128})
            devices["pybdev-ublk"] = "/dev/ublkb0"
        except Exception as e:
            notes.append(f"ublk export unavailable ({e})")
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
        ratios = {f"{p}/kernel": {j: medians[p][j]["iops"] / medians["kernel"][j]["iops"]
                                  for j in JOBS} for p in PYBDEV if p in medians}
        return {"medians": medians, "runs": runs, "ratios": ratios, "notes": notes,
                "devices": devices, "runtime_s": opts.runtime, "rounds": opts.rounds,
                "environment": "QEMU TCG guest, 2 vCPUs, kernel 6.12 (emulation: only "
                               "ratios are meaningful)"}
    finally:
        sh(f"nvme disconnect -n {ANCHOR}", check=False)
        for method, params in (("nbd_stop_disk", {"nbd_device": "/dev/nbd0"}),
                               ("ublk_stop_disk", {"ublk_id": 0}),
                               ("ublk_destroy_target", None),
                               ("bdev_nvme_detach_controller", {"name": "K"})):
            with contextlib.suppress(Exception):
                t.rpc(method, params, timeout=60)
        t.stop(timeout=60)
        nvmet_teardown()


def report(data: dict[str, Any]) -> str:
    return vmbench.table(data, ("kernel", *PYBDEV), JOBS)


def main() -> int:
    return vmbench.main(__file__, __doc__ or "", in_vm, report, runtime=8,
                        budget=lambda o: len(JOBS) * o.rounds * 3 * (o.runtime + 15) + 300)


if __name__ == "__main__":
    sys.exit(main())
