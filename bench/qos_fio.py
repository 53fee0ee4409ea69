"""QoS limits (``bdev_set_qos_limit``) measured with fio through a network NBD export.

A limit holds as long as the client keeps requests waiting: quota the target grants while
nothing waits is dropped each timeslice (SPDK's rule), so when the machine stalls the
target's loop for longer than the client's queue depth lasts at the limited rate, the
measured rate falls below the limit. The queue depths below leave a margin of tens of
milliseconds; the load average is printed with the results.

One pybdev target exports a malloc bdev over a Unix socket; for each case the limit is set
over RPC and fio's nbd engine runs against the export. Printed per case: the limit, what
fio measured (IOPS or MiB/s), their ratio, and the rate without a limit for comparison
(the limit means something only well below it). The machine is shared and noisy; the
ratio to the limit is the figure, not the absolute rate.

    python bench/qos_fio.py [--runtime 10] [--ramp 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pybdev.rpc.client import RpcClient  # noqa: E402

SIZE = 256 << 20
MIB = 1 << 20
#: (name, limits, fio arguments, the figure the limit bounds)
CASES: list[tuple[str, dict[str, int], list[str], str]] = [
    ("iops 2000, 4k randread qd64", {"rw_ios_per_sec": 2000},
     ["--rw=randread", "--bs=4k", "--iodepth=64"], "iops"),
    ("iops 5000, 4k randwrite qd64", {"rw_ios_per_sec": 5000},
     ["--rw=randwrite", "--bs=4k", "--iodepth=64"], "iops"),
    ("rw 40 MiB/s, 128k read qd8", {"rw_mbytes_per_sec": 40},
     ["--rw=read", "--bs=128k", "--iodepth=8"], "mib_s"),
    ("r 20 MiB/s, 64k randread qd8", {"r_mbytes_per_sec": 20},
     ["--rw=randread", "--bs=64k", "--iodepth=8"], "mib_s"),
    ("w 10 MiB/s, 1m write qd4", {"w_mbytes_per_sec": 10},
     ["--rw=write", "--bs=1m", "--iodepth=4"], "mib_s"),
]
NO_LIMIT = dict.fromkeys(("rw_ios_per_sec", "rw_mbytes_per_sec", "r_mbytes_per_sec",
                          "w_mbytes_per_sec"), 0)


@contextlib.contextmanager
def target(tmp: Path) -> Iterator[tuple[RpcClient, str]]:
    rpc = tmp / "rpc.sock"
    uri = f"nbd+unix:///Malloc0?socket={tmp / 'nbd.sock'}"
    log = open(tmp / "target.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "pybdev", "-r", str(rpc)], stdout=log,
                            stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not rpc.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the target did not start; see {tmp / 'target.log'}")
            time.sleep(0.05)
        with RpcClient(str(rpc)) as client:
            client.call("bdev_malloc_create", {"name": "Malloc0", "num_blocks": SIZE // 512,
                                               "block_size": 512})
            client.call("nbd_start_disk", {"bdev_name": "Malloc0", "nbd_device": uri})
            yield client, uri
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()


def fio(uri: str, args: list[str], runtime: float, ramp: float) -> dict[str, float]:
    argv = ["fio", "--name=qos", "--ioengine=nbd", f"--uri={uri}", f"--size={SIZE}",
            "--time_based", f"--runtime={runtime}", f"--ramp_time={ramp}",
            "--output-format=json", *args]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=runtime + ramp + 60)
    if res.returncode != 0:
        raise SystemExit(f"fio failed: {' '.join(argv)}\n{res.stdout}\n{res.stderr}")
    job = json.loads(res.stdout[res.stdout.index("{"):])["jobs"][0]
    side = job["read"] if job["read"]["io_bytes"] else job["write"]
    return {"iops": side["iops"], "mib_s": side["bw_bytes"] / MIB}


def expected(limits: dict[str, int], figure: str) -> float:
    value = next(v for v in limits.values() if v)
    return float(value)  # IOPS, or MiB/s for the byte limits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", type=float, default=10)
    parser.add_argument("--ramp", type=float, default=2)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--cases", help="comma-separated case numbers (from 1)")
    args = parser.parse_args()
    if shutil.which("fio") is None:
        raise SystemExit("fio is missing (apt-get install fio)")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="qosbench", dir="/tmp") as d, \
            target(Path(d)) as (client, uri):
        subprocess.run(["fio", "--name=fill", "--ioengine=nbd", f"--uri={uri}",
                        f"--size={SIZE}", "--rw=write", "--bs=1m", "--iodepth=4"],
                       capture_output=True, check=True, timeout=600)
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"{'case':34} {'limit':>8} {'measured':>9} {'ratio':>6} {'unlimited':>10}")
        chosen = [int(c) - 1 for c in args.cases.split(",")] if args.cases else range(len(CASES))
        for name, limits, fio_args, figure in (CASES[c] for c in chosen):
            client.call("bdev_set_qos_limit", {"name": "Malloc0", **NO_LIMIT})
            free = fio(uri, fio_args, min(args.runtime, 5), 1)[figure]
            client.call("bdev_set_qos_limit", {"name": "Malloc0", **limits})
            got = fio(uri, fio_args, args.runtime, args.ramp)[figure]
            limit = expected(limits, figure)
            results.append({"case": name, "limit": limit, "measured": got,
                            "ratio": got / limit, "unlimited": free, "unit": figure})
            print(f"{name:34} {limit:8.0f} {got:9.1f} {got / limit:6.3f} {free:10.1f}",
                  flush=True)
        client.call("bdev_set_qos_limit", {"name": "Malloc0", **NO_LIMIT})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
