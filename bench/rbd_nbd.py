#!/usr/bin/env python3
"""The rbd bdev end to end: fio's nbd engine through pybdev's NBD export of an rbd bdev,
against ``rbd bench`` (C++, librbd directly) on the same throwaway cluster.

Workloads: 4 KiB random read and write at queue depth 32, 1 MiB sequential read and write
at queue depth 4. pybdev and ``rbd bench`` each get their own image of the same size,
both filled first (unwritten objects read as zeros without asking the OSD), so neither
pays for the other's exclusive-lock hand-overs. Short runs; on a loaded 2-core machine
read the ratios, not the absolute numbers.

    .venv/bin/python bench/rbd_nbd.py [--seconds 5] [--image-mib 256] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.ceph import cluster as cl  # noqa: E402  (the fixture's cluster, reused)

WORKLOADS = [  # name, fio rw, rbd bench io-type/pattern, block size, queue depth
    ("4k randread qd32", "randread", ("read", "rand"), 4096, 32),
    ("4k randwrite qd32", "randwrite", ("write", "rand"), 4096, 32),
    ("1m read qd4", "read", ("read", "seq"), 1 << 20, 4),
    ("1m write qd4", "write", ("write", "seq"), 1 << 20, 4),
]


def fio(uri: str, rw: str, bs: int, qd: int, seconds: float, size: int) -> float:
    argv = ["fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--size={size}",
            f"--rw={rw}", f"--bs={bs}", f"--iodepth={qd}", "--time_based",
            f"--runtime={seconds}", "--ramp_time=1", "--output-format=json"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    if res.returncode != 0:
        raise SystemExit(f"fio failed: {' '.join(argv)}\n{res.stdout}\n{res.stderr}")
    job = json.loads(res.stdout[res.stdout.index("{"):])["jobs"][0]
    side = job["read"] if job["read"]["io_bytes"] else job["write"]
    return float(side["iops"])


def rbd_bench(cluster: cl.CephCluster, image: str, io: tuple[str, str], bs: int, qd: int,
              seconds: float, iops_hint: float) -> float:
    # rbd bench runs for a byte count, not a time: aim at about ``seconds`` from the
    # pybdev run's rate (rbd bench is usually faster, so this errs on the short side).
    ops = max(int(iops_hint * seconds * 1.5), 200)
    out = cluster.rbd("bench", "--io-type", io[0], "--io-pattern", io[1], "--io-size",
                      str(bs), "--io-threads", str(qd), "--io-total", str(ops * bs),
                      f"{cluster.pool}/{image}", timeout=seconds * 20 + 120)
    m = re.search(r"elapsed:\s*([\d.]+)\s+ops:\s*(\d+)\s+ops/sec:\s*([\d.]+)", out)
    if not m:
        raise RuntimeError(f"cannot parse rbd bench output:\n{out}")
    return float(m.group(3))


def wait_for(path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"target did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--image-mib", type=int, default=256)
    p.add_argument("--objectstore", default="memstore", choices=["memstore", "bluestore"])
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    reason = cl.unavailable_reason()
    if reason:
        sys.exit(f"rbd_nbd: {reason}")
    if shutil.which("fio") is None:
        sys.exit("rbd_nbd: needs fio")
    size = args.image_mib << 20
    tmp = Path(tempfile.mkdtemp(prefix="pybdev-rbd-nbd-", dir="/tmp"))
    cluster = cl.CephCluster(tmp / "c", objectstore=args.objectstore)
    target: subprocess.Popen[bytes] | None = None
    results: list[dict[str, Any]] = []
    try:
        cluster.start()
        print(f"cluster ({args.objectstore}) ready in {cluster.startup_seconds:.1f} s",
              file=sys.stderr)
        for image in ("via-pybdev", "via-rbd-bench"):
            cluster.rbd("create", "--size", f"{args.image_mib}M", f"{cluster.pool}/{image}")
            cluster.rbd("bench", "--io-type", "write", "--io-size", "4M", "--io-threads", "4",
                        "--io-total", str(size), "--io-pattern", "seq",
                        f"{cluster.pool}/{image}", timeout=300)
        sock = tmp / "nbd.sock"
        uri = f"nbd+unix:///Rbd0?socket={sock}"
        cfg = tmp / "config.json"
        cfg.write_text(json.dumps({"subsystems": [
            {"subsystem": "bdev", "config": [
                {"method": "bdev_rbd_register_cluster", "params": {
                    "name": "c", "user_id": cluster.client_id,
                    "config_param": {"mon_host": cluster.mon_host},
                    "key_file": str(cluster.keyring_path)}},
                {"method": "bdev_rbd_create", "params": {
                    "name": "Rbd0", "pool_name": cluster.pool, "rbd_name": "via-pybdev",
                    "block_size": 4096, "cluster_name": "c"}}]},
            {"subsystem": "nbd", "config": [
                {"method": "nbd_start_disk",
                 "params": {"bdev_name": "Rbd0", "nbd_device": uri}}]}]}))
        log = tmp / "target.log"
        with open(log, "wb") as logf:
            target = subprocess.Popen(
                [sys.executable, "-m", "pybdev", "-r", str(tmp / "rpc.sock"), "--json",
                 str(cfg)], stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_for(sock, target, log)
        for name, rw, io, bs, qd in WORKLOADS:
            ours = fio(uri, rw, bs, qd, args.seconds, size)
            ref = rbd_bench(cluster, "via-rbd-bench", io, bs, qd, args.seconds, ours)
            results.append({"workload": name, "pybdev_nbd_iops": ours, "rbd_bench_iops": ref,
                            "ratio": ours / ref if ref else 0.0})
            print(f"{name:18} pybdev/NBD {ours:9.0f} IOPS   rbd bench {ref:9.0f} IOPS   "
                  f"ratio {ours / ref if ref else 0:.2f}", flush=True)
    finally:
        if target is not None and target.poll() is None:
            target.send_signal(signal.SIGTERM)
            try:
                target.wait(30)
            except subprocess.TimeoutExpired:
                target.kill()
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
