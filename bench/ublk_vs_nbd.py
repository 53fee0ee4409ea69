"""ublk vs the kernel NBD export vs qemu-nbd: one malloc bdev through several block devices.

Runs inside the kernel VM (``tests/kernel/vm.py``): started on the host, it boots the VM
and runs itself there with ``--in-vm``. Inside:

* ``ublk``: ``/dev/ublkb0`` on Malloc0, one queue, served on the queue thread (malloc
  declares ``thread_safe_submit``);
* ``ublk-loop``: ``/dev/ublkb1`` on a second target started with
  ``PYBDEV_UBLK_QUEUE_SERVING=0``: every request hops to the event loop and back (the path
  of bdevs that do not declare ``thread_safe_submit``);
* ``ublk-buf``: ``/dev/ublkb3`` like ``ublk`` but on a third target created with
  ``disable_user_copy``: the kernel copies data to and from a buffer per tag instead of
  the server's ``pread``/``pwrite`` on the cdev (one system call less per request);
* ``nbd``: pybdev's kernel NBD export of Malloc0 on ``/dev/nbd0``;
* ``nbd-2c``: the same with two sockets (``num_connections`` 2: two hardware queues, one
  receive worker each in the driver) on ``/dev/nbd2``, also against ``nbd`` with two fio
  processes;
* ``qemu-nbd``: ``qemu-nbd -c /dev/nbd1`` on a 64 MiB file in /dev/shm (the same kind of
  backing: RAM);
* ``ublk-2q``: ``/dev/ublkb2`` on Malloc0 with two queues, against ``ublk`` with two fio
  processes: whether two queue threads contend on the GIL.

Every device is written once first (``vmbench.prefill``); then fio (libaio, O_DIRECT)
runs the same jobs on each device, interleaved, ``--repeat`` rounds; figures are medians,
ratios the median of per-round ratios. Software emulation makes absolute numbers
meaningless: only ratios count. Usage::

    python bench/ublk_vs_nbd.py [--runtime 8] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20
sys.path.insert(0, str(ROOT))

from bench import vmbench  # noqa: E402
from bench.vmbench import fio  # noqa: E402

JOBS: dict[str, list[str]] = {
    **vmbench.JOBS,
    "randread-4k-qd1": ["--rw=randread", "--bs=4k", "--iodepth=1"],
}


# Jobs for the GIL question: two fio processes (one per vCPU), so that blk-mq spreads the
# requests over both queues of a two-queue device.
PARALLEL_JOBS: dict[str, list[str]] = {
    "randread-4k-2x16": ["--rw=randread", "--bs=4k", "--iodepth=16", "--numjobs=2",
                         "--group_reporting"],
}


def _cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its live descendants (``qemu-nbd -c`` serves from a child)."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total / os.sysconf("SC_CLK_TCK")


def in_vm(opts: argparse.Namespace) -> dict[str, Any]:
    from tests.conftest import Target

    tmp = Path(tempfile.mkdtemp())
    t = Target(tmp / "b.sock", ["-m", "0x3"], tmp / "target.log")
    # A second target serving ublk on the event loop only (the path before queue-thread
    # serving, and the path of bdevs without thread_safe_submit).
    os.environ["PYBDEV_UBLK_QUEUE_SERVING"] = "0"
    try:
        t2 = Target(tmp / "c.sock", ["-m", "0x3"], tmp / "target2.log")
    finally:
        del os.environ["PYBDEV_UBLK_QUEUE_SERVING"]
    t3 = Target(tmp / "d.sock", ["-m", "0x3"], tmp / "target3.log")
    # Generous: starting Python over 9p under emulation on a loaded host is slow.
    t.wait_ready(300)
    t2.wait_ready(300)
    t3.wait_ready(300)
    devices: dict[str, str] = {}
    parallel: dict[str, str] = {}
    notes = []
    qemu_nbd: subprocess.Popen[bytes] | None = None
    image = Path("/dev/shm/qemu-nbd-bench.raw")
    try:
        for tgt, bdev in ((t, "Malloc0"), (t2, "Malloc1"), (t3, "Malloc2")):
            tgt.rpc("bdev_malloc_create", {"name": bdev, "num_blocks": 64 * 256,
                                           "block_size": 4096})
            tgt.rpc("ublk_create_target", {"disable_user_copy": True} if tgt is t3 else None)
        t.rpc("ublk_start_disk", {"bdev_name": "Malloc0", "ublk_id": 0,
                                  "num_queues": 1, "queue_depth": 128})
        devices["ublk"] = "/dev/ublkb0"
        t2.rpc("ublk_start_disk", {"bdev_name": "Malloc1", "ublk_id": 1,
                                   "num_queues": 1, "queue_depth": 128})
        devices["ublk-loop"] = "/dev/ublkb1"
        t3.rpc("ublk_start_disk", {"bdev_name": "Malloc2", "ublk_id": 3,
                                   "num_queues": 1, "queue_depth": 128})
        devices["ublk-buf"] = "/dev/ublkb3"
        t.rpc("ublk_start_disk", {"bdev_name": "Malloc0", "ublk_id": 2,
                                  "num_queues": 2, "queue_depth": 64})
        parallel["ublk"] = "/dev/ublkb0"
        parallel["ublk-2q"] = "/dev/ublkb2"
        try:
            t.rpc("nbd_start_disk", {"bdev_name": "Malloc0", "nbd_device": "/dev/nbd0"})
            devices["nbd"] = parallel["nbd"] = "/dev/nbd0"
            t.rpc("nbd_start_disk", {"bdev_name": "Malloc0", "nbd_device": "/dev/nbd2",
                                     "num_connections": 2})
            devices["nbd-2c"] = parallel["nbd-2c"] = "/dev/nbd2"
        except Exception as e:
            notes.append(f"NBD kernel export unavailable ({e}); ublk measured alone")
        if shutil.which("qemu-nbd"):
            # The same kind of backing for qemu-nbd: a RAM file of the same size.
            with open(image, "wb") as f:
                f.truncate(64 * MiB)
            qemu_log = open(tmp / "qemu-nbd.log", "wb")  # noqa: SIM115 - closed below
            qemu_nbd = subprocess.Popen(
                # -k: its default socket is under /var/lock, absent in the guest.
                ["qemu-nbd", "-f", "raw", "--cache=writeback", "--persistent", "-k",
                 str(tmp / "qemu-nbd.sock"), "-c", "/dev/nbd1", str(image)],
                stdout=qemu_log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                size = Path("/sys/block/nbd1/size")
                if size.exists() and int(size.read_text() or 0) > 0:
                    devices["qemu-nbd"] = "/dev/nbd1"
                    break
                time.sleep(0.2)
            else:
                qemu_log.flush()
                why = (tmp / "qemu-nbd.log").read_text(errors="replace").strip()[-300:]
                notes.append(f"qemu-nbd -c /dev/nbd1 did not connect: {why or 'no output'}"
                             f" (exit status {qemu_nbd.poll()})")
        # Whose CPU time serves each device (kernel threads of the nbd and ublk drivers
        # are not counted: the server process only).
        servers = {"ublk": t.proc.pid, "nbd": t.proc.pid, "nbd-2c": t.proc.pid,
                   "ublk-2q": t.proc.pid,
                   "ublk-loop": t2.proc.pid, "ublk-buf": t3.proc.pid}
        if qemu_nbd is not None:
            servers["qemu-nbd"] = qemu_nbd.pid
        for path in {**devices, **parallel}.values():
            vmbench.prefill(path)
        runs: dict[str, dict[str, list[dict[str, float]]]] = {}
        for rnd in range(opts.rounds):
            for jobs, devs in ((JOBS, devices), (PARALLEL_JOBS, parallel)):
                for job, args in jobs.items():
                    for name, path in devs.items():
                        cpu0, wall0 = _cpu_seconds(servers[name]), time.monotonic()
                        r = fio(path, args, opts.runtime)
                        r["server_cpu_pct"] = 100 * (_cpu_seconds(servers[name]) - cpu0) / (
                            time.monotonic() - wall0)
                        runs.setdefault(job, {}).setdefault(name, []).append(r)
                        print(f"round {rnd + 1} {job:20} {name:10} {r['iops']:9.0f} IOPS",
                              file=sys.stderr, flush=True)
        results = {job: {name: {k: statistics.median([r[k] for r in rs]) for k in rs[0]}
                         for name, rs in by.items()} for job, by in runs.items()}

        def ratio(job: str, a: str, b: str) -> float | None:
            ra, rb = runs[job].get(a), runs[job].get(b)
            if not ra or not rb:
                return None
            return statistics.median([x["iops"] / y["iops"] for x, y in zip(ra, rb, strict=True)])

        ratios = {
            "ublk/nbd": {j: ratio(j, "ublk", "nbd") for j in JOBS},
            "ublk-loop/nbd": {j: ratio(j, "ublk-loop", "nbd") for j in JOBS},
            "ublk/ublk-loop": {j: ratio(j, "ublk", "ublk-loop") for j in JOBS},
            "ublk-buf/nbd": {j: ratio(j, "ublk-buf", "nbd") for j in JOBS},
            "ublk-buf/ublk": {j: ratio(j, "ublk-buf", "ublk") for j in JOBS},
            "nbd/qemu-nbd": {j: ratio(j, "nbd", "qemu-nbd") for j in JOBS},
            "nbd-2c/nbd": {j: ratio(j, "nbd-2c", "nbd") for j in {**JOBS, **PARALLEL_JOBS}},
            "ublk/nbd-2c": {j: ratio(j, "ublk", "nbd-2c") for j in {**JOBS, **PARALLEL_JOBS}},
            "ublk-2q/ublk": {j: ratio(j, "ublk-2q", "ublk") for j in PARALLEL_JOBS},
        }
        return {"results": results, "runs": runs, "ratios": ratios,
                "ratio_ublk_over_nbd": ratios["ublk/nbd"], "notes": notes,
                "runtime_s": opts.runtime, "repeat": opts.rounds,
                "environment": "QEMU TCG guest, 2 vCPUs, kernel " + os.uname().release
                               + " (emulation: only ratios are meaningful)"}
    finally:
        if qemu_nbd is not None:
            subprocess.run(["qemu-nbd", "-d", "/dev/nbd1"], capture_output=True, check=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                qemu_nbd.wait(10)
            if qemu_nbd.poll() is None:
                qemu_nbd.kill()
            image.unlink(missing_ok=True)
        for cmd, params in (("nbd_stop_disk", {"nbd_device": "/dev/nbd0"}),
                            ("nbd_stop_disk", {"nbd_device": "/dev/nbd2"}),
                            ("ublk_destroy_target", None)):
            with contextlib.suppress(Exception):
                t.rpc(cmd, params, timeout=60)
        for other in (t2, t3):
            with contextlib.suppress(Exception):
                other.rpc("ublk_destroy_target", None, timeout=60)
        for tgt in (t, t2, t3):
            tgt.stop(timeout=60)


def report(data: dict[str, Any]) -> str:
    lines = []
    for job, by in data["results"].items():
        lines.append(f"{job:<20} " + "  ".join(f"{n} {r['iops']:.0f}" for n, r in by.items()))
    for what, per_job in data["ratios"].items():
        lines.append(f"{what:<16} " + "  ".join(
            f"{j} {v:.2f}" for j, v in per_job.items() if v is not None))
    lines += data["notes"]
    return "\n".join(lines)


def main() -> int:
    return vmbench.main(__file__, __doc__ or "", in_vm, report, runtime=8, rounds="repeat",
                        budget=lambda o: (len(JOBS) * 6 + len(PARALLEL_JOBS) * 4) * o.rounds
                        * (o.runtime + 20) + 240)


if __name__ == "__main__":
    sys.exit(main())
