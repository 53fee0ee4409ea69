"""pybdev's NVMe/TCP initiator bdev on the host: fio (nbd engine) through an NBD export of
a namespace bdev attached from a second pybdev process (NVMe/TCP over loopback), against
the same NBD export of a malloc bdev in the first process (no NVMe/TCP hop).

    python bench/nvme_initiator.py [--runtime 5] [--size 256M]

Prints IOPS and MiB/s of each path and the ratio initiator/direct: what the NVMe/TCP hop
(initiator, target and two more sockets, all Python) costs.  The machine is shared and
noisy: compare the ratio, not the absolute numbers.  (The VM comparison against the
kernel's initiator that issue 17 also asks for is not here.)
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.nbd_fio import fio  # noqa: E402
from pybdev.rpc.client import RpcClient  # noqa: E402

NQN = "nqn.2016-06.io.spdk:bench"
WORKLOADS = {
    "rr4k_qd32": ["--rw=randread", "--bs=4k", "--iodepth=32"],
    "rw4k_qd32": ["--rw=randwrite", "--bs=4k", "--iodepth=32"],
    "sr128k_qd8": ["--rw=read", "--bs=128k", "--iodepth=8"],
    "sw128k_qd8": ["--rw=write", "--bs=128k", "--iodepth=8"],
    "sr128k_qd1": ["--rw=read", "--bs=128k", "--iodepth=1"],
    "sr64k_qd8": ["--rw=read", "--bs=64k", "--iodepth=8"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def target(tmp: Path, name: str) -> Iterator[RpcClient]:
    sock = tmp / f"{name}.sock"
    log = open(tmp / f"{name}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "pybdev", "-r", str(sock)], stdout=log,
                            stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start")
            time.sleep(0.05)
        with RpcClient(str(sock)) as c:
            c.call("framework_wait_init")
            yield c
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runtime", type=float, default=5)
    ap.add_argument("--size", default="256M")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--keep-logs", help="copy the targets' logs to this directory")
    args = ap.parse_args()
    size = int(args.size.rstrip("M")) << 20
    with tempfile.TemporaryDirectory() as d, target(Path(d), "remote") as remote, \
            target(Path(d), "local") as local:
        port = free_port()
        remote.call("bdev_malloc_create", {"name": "M", "num_blocks": size // 512,
                                           "block_size": 512})
        remote.call("nvmf_create_transport", {"trtype": "TCP"})
        remote.call("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True})
        remote.call("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "M"}})
        remote.call("nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": {
            "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": str(port)}})
        local.call("bdev_nvme_attach_controller", {
            "name": "Nvme0", "trtype": "tcp", "traddr": "127.0.0.1", "adrfam": "ipv4",
            "trsvcid": str(port), "subnqn": NQN})
        local.call("bdev_malloc_create", {"name": "L", "num_blocks": size // 512,
                                          "block_size": 512})
        uris = {}
        for bdev in ("Nvme0n1", "L"):
            uri = f"nbd+unix:///{bdev}?socket={d}/{bdev}.nbd"
            local.call("nbd_start_disk", {"bdev_name": bdev, "nbd_device": uri})
            uris[bdev] = uri
            subprocess.run(["fio", "--name=fill", "--ioengine=nbd", f"--uri={uri}",
                            f"--size={size}", "--rw=write", "--bs=1m", "--iodepth=4"],
                           capture_output=True, check=True, timeout=600)
        print(f"{'workload':12} {'initiator IOPS':>15} {'direct IOPS':>12} {'MiB/s':>8} "
              f"{'ratio':>6}")
        for name in args.workloads.split(","):
            wl = WORKLOADS[name]
            res: dict[str, Any] = {b: fio(u, wl, args.runtime, 1, size)
                                   for b, u in uris.items()}
            nv, direct = res["Nvme0n1"], res["L"]
            print(f"{name:12} {nv['iops']:15.0f} {direct['iops']:12.0f} "
                  f"{nv['mib_s']:8.1f} {nv['iops'] / direct['iops']:6.2f}")
        if args.keep_logs:
            for log in Path(d).glob("*.log"):
                Path(args.keep_logs, log.name).write_bytes(log.read_bytes())


if __name__ == "__main__":
    main()
