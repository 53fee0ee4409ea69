"""ublk vs the kernel NBD export: the same malloc bdev through /dev/ublkb0 and /dev/nbd0.

Runs inside the kernel VM (``tests/kernel/vm.py``): started on the host, it boots the VM
and runs itself there with ``--in-vm``. Inside, one pybdev target exports one malloc bdev
twice: ``ublk_start_disk Malloc0 0`` and ``nbd_start_disk Malloc0 /dev/nbd0``. fio (libaio,
O_DIRECT) then runs the same jobs on each device, interleaved, ``--repeat`` times; the best
round of each counts. Software emulation makes absolute numbers meaningless, so the
result is the **ratio** ublk/NBD per job. Where the NBD kernel export is missing, ublk is
measured alone and the report says so. Usage::

    python bench/ublk_vs_nbd.py [--runtime 8] [--repeat 2] [--json bench/results/ublk_vs_nbd.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

JOBS: dict[str, list[str]] = {
    "randread-4k-qd32": ["--rw=randread", "--bs=4k", "--iodepth=32"],
    "randwrite-4k-qd32": ["--rw=randwrite", "--bs=4k", "--iodepth=32"],
    "read-128k-qd8": ["--rw=read", "--bs=128k", "--iodepth=8"],
    "write-128k-qd8": ["--rw=write", "--bs=128k", "--iodepth=8"],
    "randread-4k-qd1": ["--rw=randread", "--bs=4k", "--iodepth=1"],
}


def fio(device: str, args: list[str], runtime: int) -> dict[str, float]:
    out = subprocess.run(
        ["fio", "--name=j", f"--filename={device}", "--ioengine=libaio", "--direct=1",
         "--time_based", f"--runtime={runtime}", "--size=48M", "--output-format=json",
         *args], capture_output=True, text=True, check=True, timeout=runtime + 120)
    job = json.loads(out.stdout)["jobs"][0]
    rw = "write" if job["write"]["io_bytes"] else "read"
    return {"iops": job[rw]["iops"], "mib_s": job[rw]["bw_bytes"] / (1 << 20),
            "lat_us": job[rw]["lat_ns"]["mean"] / 1000}


def in_vm(opts: argparse.Namespace) -> dict[str, Any]:
    from tests.conftest import Target

    tmp = Path(tempfile.mkdtemp())
    t = Target(tmp / "b.sock", ["-m", "0x3"], tmp / "target.log").wait_ready(60)
    devices = {}
    notes = []
    try:
        t.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 64 * 256,
                                     "block_size": 4096})
        t.rpc("ublk_create_target")
        t.rpc("ublk_start_disk", {"bdev_name": "Malloc0", "ublk_id": 0,
                                  "num_queues": 1, "queue_depth": 128})
        devices["ublk"] = "/dev/ublkb0"
        try:
            t.rpc("nbd_start_disk", {"bdev_name": "Malloc0", "nbd_device": "/dev/nbd0"})
            devices["nbd"] = "/dev/nbd0"
        except Exception as e:  # the kernel NBD export is another engineer's work
            notes.append(f"NBD kernel export unavailable ({e}); ublk measured alone")
        results: dict[str, dict[str, dict[str, float]]] = {d: {} for d in devices}
        for job, args in JOBS.items():
            for _ in range(opts.repeat):
                for name, path in devices.items():
                    r = fio(path, args, opts.runtime)
                    best = results[name].get(job)
                    if best is None or r["iops"] > best["iops"]:
                        results[name][job] = r
        ratios = {}
        if "nbd" in results:
            ratios = {job: results["ublk"][job]["iops"] / results["nbd"][job]["iops"]
                      for job in JOBS}
        return {"results": results, "ratio_ublk_over_nbd": ratios, "notes": notes,
                "runtime_s": opts.runtime, "repeat": opts.repeat,
                "environment": "QEMU TCG guest, 2 vCPUs, kernel 6.12 (emulation: only "
                               "ratios are meaningful)"}
    finally:
        for cmd, params in (("nbd_stop_disk", {"nbd_device": "/dev/nbd0"}),
                            ("ublk_destroy_target", None)):
            with contextlib.suppress(Exception):
                t.rpc(cmd, params, timeout=60)
        t.stop(timeout=60)


def report(data: dict[str, Any]) -> str:
    lines = [f"{'job':<20} {'ublk IOPS':>10} {'nbd IOPS':>10} {'ublk/nbd':>9}"]
    res = data["results"]
    for job in JOBS:
        u = res["ublk"][job]["iops"]
        n = res.get("nbd", {}).get(job, {}).get("iops")
        ratio = f"{u / n:9.2f}" if n else "        -"
        lines.append(f"{job:<20} {u:10.0f} {n if n else 0:10.0f} {ratio}")
    lines += data["notes"]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runtime", type=int, default=8, help="seconds per fio run")
    p.add_argument("--repeat", type=int, default=2, help="rounds per job and device")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--in-vm", action="store_true", help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.in_vm:
        data = in_vm(opts)
        out = Path(os.environ.get("PYBDEV_VM_SHARE", "/tmp")) / "ublk_vs_nbd.json"
        out.write_text(json.dumps(data, indent=2))
        print(report(data))
        return 0
    from tests.kernel import vm

    reason = vm.unavailable_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 1
    if not shutil.which("fio"):
        print("cannot run: fio is not installed", file=sys.stderr)
        return 1
    share = Path(tempfile.mkdtemp(prefix="ublk-bench-"))
    budget = len(JOBS) * opts.repeat * 2 * (opts.runtime + 15) + 120
    start = time.monotonic()
    r = vm.run_in_vm(f"{sys.executable} bench/ublk_vs_nbd.py --in-vm --runtime {opts.runtime} "
                     f"--repeat {opts.repeat}", timeout=budget, share_dir=share)
    print(r.output)
    if r.returncode != 0:
        print(r.describe(), file=sys.stderr)
        return 1
    data = json.loads((share / "ublk_vs_nbd.json").read_text())
    data["wall_s"] = round(time.monotonic() - start, 1)
    if opts.json:
        opts.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
