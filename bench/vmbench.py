"""What the benchmarks that run inside the kernel VM share.

Each such script (``ublk_vs_nbd.py``, ``nvmf_vs_kernel.py``, ``nvme_initiator_vs_kernel.py``)
is started on the host; :func:`main` boots the VM (``tests/kernel/vm.py``), runs the script
there with ``--in-vm``, and collects the JSON it leaves in the shared directory. Inside, the
script's ``in_vm`` measures with :func:`fio` and returns its results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

SIZE = "48M"  # the region of each device the jobs use

# The jobs every VM benchmark runs on each device (fio arguments).
JOBS: dict[str, list[str]] = {
    "randread-4k-qd32": ["--rw=randread", "--bs=4k", "--iodepth=32"],
    "randwrite-4k-qd32": ["--rw=randwrite", "--bs=4k", "--iodepth=32"],
    "read-128k-qd8": ["--rw=read", "--bs=128k", "--iodepth=8"],
    "write-128k-qd8": ["--rw=write", "--bs=128k", "--iodepth=8"],
}


def fio(device: str, args: list[str], runtime: int) -> dict[str, float]:
    """One fio job (libaio, O_DIRECT, time based) on ``device``: IOPS, MiB/s, mean latency."""
    out = subprocess.run(
        ["fio", "--name=j", f"--filename={device}", "--ioengine=libaio", "--direct=1",
         "--time_based", f"--runtime={runtime}", f"--size={SIZE}", "--output-format=json",
         *args], capture_output=True, text=True, check=True, timeout=runtime + 120)
    # fio may print notes before its JSON.
    job = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]
    rw = "write" if job["write"]["io_bytes"] else "read"
    return {"iops": job[rw]["iops"], "mib_s": job[rw]["bw_bytes"] / (1 << 20),
            "lat_us": job[rw]["lat_ns"]["mean"] / 1000}


def prefill(device: str) -> None:
    """Write the region the jobs use once, so no timed run pays the first touch of a page
    (a RAM-backed bdev's memory is mapped on first write; under emulation that dominated
    whichever device ran first)."""
    subprocess.run(["fio", "--name=fill", f"--filename={device}", "--ioengine=libaio",
                    "--direct=1", "--rw=write", "--bs=1M", "--iodepth=4", f"--size={SIZE}",
                    "--output-format=terse"], capture_output=True, check=True, timeout=600)


def table(data: dict[str, Any], names: tuple[str, ...], jobs: dict[str, list[str]]) -> str:
    """IOPS of each device (``data["medians"]``) and each ratio, per job, then the notes."""
    med = data["medians"]
    names = tuple(n for n in names if n in med)
    width = max(12, *(len(n) + 5 for n in names))
    rwidth = max(13, *(len(r) + 1 for r in data["ratios"]))
    lines = [f"{'job':<18}" + "".join(f" {n + ' IOPS':>{width}}" for n in names)
             + "".join(f" {r:>{rwidth}}" for r in data["ratios"])]
    for job in jobs:
        lines.append(f"{job:<18}" + "".join(f" {med[n][job]['iops']:{width}.0f}" for n in names)
                     + "".join(f" {data['ratios'][r][job]:{rwidth}.2f}" for r in data["ratios"]))
    return "\n".join(lines + data["notes"])


def main(script: str, doc: str, in_vm: Callable[[argparse.Namespace], dict[str, Any]],
         report: Callable[[dict[str, Any]], str], *, runtime: int, rounds: str = "rounds",
         budget: Callable[[argparse.Namespace], int]) -> int:
    """The command line of a VM benchmark: ``--runtime``, ``--<rounds>``, ``--json``.

    ``rounds`` names the option of interleaved rounds (``repeat`` in ublk_vs_nbd.py);
    ``budget(opts)`` is the VM's time limit in seconds.
    """
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--runtime", type=int, default=runtime, help="seconds per fio run")
    p.add_argument(f"--{rounds}", type=int, default=3, dest="rounds",
                   help="interleaved rounds; figures are medians")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--in-vm", action="store_true", help=argparse.SUPPRESS)
    opts = p.parse_args()
    name = Path(script).stem
    if opts.in_vm:
        data = in_vm(opts)
        out = Path(os.environ.get("PYBDEV_VM_SHARE", "/tmp")) / f"{name}.json"
        out.write_text(json.dumps(data, indent=2))
        print(report(data))
        return 0
    sys.path.insert(0, str(ROOT))
    from tests.kernel import vm

    reason = vm.unavailable_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 1
    if not shutil.which("fio"):
        print("cannot run: fio is not installed", file=sys.stderr)
        return 1
    share = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    start = time.monotonic()
    r = vm.run_in_vm(f"{sys.executable} bench/{name}.py --in-vm --runtime {opts.runtime} "
                     f"--{rounds} {opts.rounds}", timeout=budget(opts), share_dir=share)
    print(r.output)
    if r.returncode != 0:
        print(r.describe(), file=sys.stderr)
        return 1
    data = json.loads((share / f"{name}.json").read_text())
    data["wall_s"] = round(time.monotonic() - start, 1)
    if opts.json:
        opts.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0
