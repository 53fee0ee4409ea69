"""Logical volumes: what the lvol layer costs, measured with fio's nbd engine and RPC timings.

1. A thick lvol against a malloc bdev of the same size, both exported over NBD (Unix socket)
   by one target, interleaved in the same run (the order alternates from round to round):
   4 KiB QD32 random read and write. Both disks are filled first so neither pays anything on
   first touch.
2. First-write allocation: 4 KiB QD32 random writes on a fresh thin lvol (most writes
   allocate a cluster: a metadata commit each, grouped), against the same on the thick lvol
   right after it.
3. Snapshot and clone creation while fio writes to the origin: the RPC latency.
4. Start-up: an aio base holding an lvstore with N lvols and N/10 snapshots; the time
   ``bdev_aio_create`` takes (it answers after examine loaded the store and registered
   every lvol bdev), for a few N.

    python bench/lvol_nbd.py [--runtime 5] [--rounds 3] [--size 256M] [--load 250,500,1000]
    python bench/lvol_nbd.py --micro

``--micro`` measures in process the CPU per 4 KiB request through a descriptor of a malloc
bdev, of a thick lvol and of a fully allocated thin lvol on another malloc (best of 7 rounds,
process time): the lvol layer's own cost, without the NBD server or other processes' noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pybdev.rpc.client import JsonRpcException, RpcClient  # noqa: E402

MiB = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Target:
    def __init__(self, tmp: Path, name: str, *args: str) -> None:
        self.sock = tmp / f"{name}.sock"
        self.log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "pybdev", "-r", str(self.sock),
                                      *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 120
        while True:
            try:
                self.rpc("spdk_get_version")
                break
            except (OSError, JsonRpcException):
                if time.monotonic() > deadline:
                    raise SystemExit("target did not start") from None
                time.sleep(0.02)
        # The socket answers once the --json replay (and its examine) is done.
        self.ready_after = time.perf_counter() - self.started

    def rpc(self, method: str, params: dict[str, Any] | None = None) -> Any:
        with RpcClient(str(self.sock), timeout=600) as c:
            return c.call(method, params)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def fio(uri: str, size: int, runtime: float, *args: str) -> dict[str, float]:
    argv = ["fio", "--name=b", "--ioengine=nbd", f"--uri={uri}", f"--size={size}",
            "--time_based", f"--runtime={runtime}", "--ramp_time=1", "--output-format=json",
            *args]
    res = subprocess.run(argv, capture_output=True, text=True, check=True,
                         timeout=runtime + 120)
    job = json.loads(res.stdout[res.stdout.index("{"):])["jobs"][0]
    side = job["read"] if job["read"]["io_bytes"] else job["write"]
    return {"iops": side["iops"], "lat_us": side["lat_ns"]["mean"] / 1000,
            "ios": side["total_ios"]}


def fill(uri: str, size: int) -> None:
    subprocess.run(["fio", "--name=f", "--ioengine=nbd", f"--uri={uri}", f"--size={size}",
                    "--rw=write", "--bs=1m", "--iodepth=4"], capture_output=True, check=True,
                   timeout=600)


def export(t: Target, tmp: Path, bdev: str, name: str) -> str:
    uri = f"nbd+unix:///{name}?socket={tmp}/{name}.nbd"
    got: str = t.rpc("nbd_start_disk", {"bdev_name": bdev, "nbd_device": uri})
    return got


def thick_vs_base(t: Target, tmp: Path, size: int, runtime: float, rounds: int) -> None:
    mb = size // MiB
    t.rpc("bdev_malloc_create", {"name": "Base", "num_blocks": size // 512, "block_size": 512})
    # Room for the thick lvol, the thin one and the metadata cluster.
    t.rpc("bdev_malloc_create", {"name": "LvsBase", "num_blocks": (2 * size + 8 * MiB) // 512,
                                 "block_size": 512})
    t.rpc("bdev_lvol_create_lvstore", {"bdev_name": "LvsBase", "lvs_name": "lvs"})
    t.rpc("bdev_lvol_create", {"lvs_name": "lvs", "lvol_name": "thick", "size_in_mib": mb})
    t.rpc("bdev_lvol_create", {"lvs_name": "lvs", "lvol_name": "thin", "size_in_mib": mb,
                               "thin_provision": True})
    uris = {"base": export(t, tmp, "Base", "base"), "lvol": export(t, tmp, "lvs/thick", "lvol")}
    for uri in uris.values():
        fill(uri, size)
    for rw in ("randread", "randwrite"):
        got: dict[str, list[float]] = {k: [] for k in uris}
        cpu: dict[str, list[float]] = {k: [] for k in uris}
        ratios = []
        for i in range(rounds):
            r = {}
            for k, u in (list(uris.items()) if i % 2 == 0 else list(uris.items())[::-1]):
                c0 = t.cpu_seconds()
                res = fio(u, size, runtime, f"--rw={rw}", "--bs=4k", "--iodepth=32")
                # fio's ramp time is not in total_ios: only a bound, the same for both.
                cpu[k].append((t.cpu_seconds() - c0) / res["ios"] * 1e6)
                r[k] = res["iops"]
                got[k].append(res["iops"])
            ratios.append(r["lvol"] / r["base"])
        cpu_ratio = statistics.median(cpu["base"]) / statistics.median(cpu["lvol"])
        print(f"4k QD32 {rw:9s}: base {statistics.median(got['base']):8.0f} IOPS "
              f"{statistics.median(cpu['base']):5.1f} us CPU/IO, thick lvol "
              f"{statistics.median(got['lvol']):8.0f} IOPS "
              f"{statistics.median(cpu['lvol']):5.1f} us CPU/IO; IOPS ratio "
              f"{statistics.median(ratios):.2f} (rounds: {', '.join(f'{x:.2f}' for x in ratios)})"
              f", CPU/IO base/lvol {cpu_ratio:.2f}")
    thin = export(t, tmp, "lvs/thin", "thin")
    r = fio(thin, size, runtime, "--rw=randwrite", "--bs=4k", "--iodepth=32")
    n = t.rpc("bdev_lvol_get_lvols")[1]["num_allocated_clusters"]
    thick = fio(uris["lvol"], size, runtime, "--rw=randwrite", "--bs=4k", "--iodepth=32")
    print(f"4k QD32 randwrite on a fresh thin lvol: {r['iops']:.0f} IOPS, mean latency "
          f"{r['lat_us']:.0f} us, {n} clusters allocated during the run; the thick lvol "
          f"right after: {thick['iops']:.0f} IOPS, {thick['lat_us']:.0f} us "
          f"(thin/thick {r['iops'] / thick['iops']:.2f})")
    # Snapshot and clone under I/O (the thin lvol goes: the origin needs room for copies).
    t.rpc("nbd_stop_disk", {"nbd_device": thin})
    t.rpc("bdev_lvol_delete", {"name": "lvs/thin"})
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            fio(uris["lvol"], size, 1, "--rw=randwrite", "--bs=4k", "--iodepth=32")

    th = threading.Thread(target=writer)
    th.start()
    time.sleep(1.5)
    times = []
    for i in range(5):
        t0 = time.perf_counter()
        t.rpc("bdev_lvol_snapshot", {"lvol_name": "lvs/thick", "snapshot_name": f"s{i}"})
        t1 = time.perf_counter()
        t.rpc("bdev_lvol_clone", {"snapshot_name": f"lvs/s{i}", "clone_name": f"c{i}"})
        t2 = time.perf_counter()
        time.sleep(1)
        # Back to one lvol: the clone goes, the snapshot merges into the origin.
        t.rpc("bdev_lvol_delete", {"name": f"lvs/c{i}"})
        t3 = time.perf_counter()
        t.rpc("bdev_lvol_delete", {"name": f"lvs/s{i}"})
        times.append((t1 - t0, t2 - t1, time.perf_counter() - t3))
    stop.set()
    th.join()
    print("snapshot / clone / merge-delete of the snapshot, under QD32 writes: " + ", ".join(
        f"{a * 1000:.0f}/{b * 1000:.0f}/{c * 1000:.0f} ms" for a, b, c in times))


def load_time(tmp: Path, n: int) -> None:
    image = tmp / f"load{n}.img"
    with image.open("wb") as f:
        f.truncate(8 << 30)
    t = Target(tmp, f"load{n}")
    try:
        t.rpc("bdev_aio_create", {"name": "aio0", "filename": str(image), "block_size": 4096})
        t.rpc("bdev_lvol_create_lvstore", {"bdev_name": "aio0", "lvs_name": "lvs",
                                           "cluster_sz": MiB, "clear_method": "none"})
        for i in range(n):
            t.rpc("bdev_lvol_create", {"lvs_name": "lvs", "lvol_name": f"v{i}",
                                       "size_in_mib": 4, "thin_provision": True})
        for i in range(n // 10):
            t.rpc("bdev_lvol_snapshot", {"lvol_name": f"lvs/v{i}", "snapshot_name": f"s{i}"})
    finally:
        t.stop()
    t = Target(tmp, f"load{n}b")
    try:
        t0 = time.perf_counter()
        t.rpc("bdev_aio_create", {"name": "aio0", "filename": str(image), "block_size": 4096})
        dt = time.perf_counter() - t0
        count = len(t.rpc("bdev_lvol_get_lvols"))
    finally:
        t.stop()
    # A real start-up: --json creates the aio bdev; the socket answers after examine.
    config = tmp / f"load{n}.json"
    config.write_text(json.dumps({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_aio_create",
         "params": {"name": "aio0", "filename": str(image), "block_size": 4096}},
        {"method": "bdev_wait_for_examine"}]}]}))
    empty = Target(tmp, f"empty{n}")
    empty.stop()
    t = Target(tmp, f"load{n}c", "--json", str(config))
    try:
        count2 = len(t.rpc("bdev_lvol_get_lvols"))
        print(f"{n} lvols + {n // 10} snapshots: bdev_aio_create answered in {dt:.2f} s "
              f"({count} loaded); start-up with --json {t.ready_after:.2f} s ({count2} "
              f"loaded), an empty target's {empty.ready_after:.2f} s")
    finally:
        t.stop()
        image.unlink()


def micro() -> None:
    import asyncio
    import gc
    import random

    from pybdev.bdev.core import BdevLayer
    from pybdev.bdev.lvol.module import LvolModule
    from pybdev.bdev.malloc import MallocModule
    from pybdev.bdev.modules import BUILTIN_MODULES

    async def run() -> None:
        layer = BdevLayer()
        for cls in BUILTIN_MODULES:
            layer.add_module(cls(layer))
        m = layer.module(MallocModule)
        m.create(name="B", block_size=512, num_blocks=128 * 2048)
        m.create(name="L", block_size=512, num_blocks=264 * 2048)
        lv = layer.module(LvolModule)
        await lv.create_lvstore("L", "lvs")
        await lv.create_lvol(lv.stores[0], "thick", 128 * MiB, thin=False,
                             clear_method="default")
        await lv.create_lvol(lv.stores[0], "thin", 128 * MiB, thin=True,
                             clear_method="default")
        descs = {n: layer.open(n, write=True) for n in ("B", "lvs/thick", "lvs/thin")}
        for at in range(0, 128 * MiB, 4 * MiB):  # allocate every cluster of the thin lvol
            await descs["lvs/thin"].write_async(at, b"\0" * 4096)
        offs = [random.randrange(0, 32768) * 4096 for _ in range(100000)]
        buf = b"x" * 4096
        best: dict[str, list[float]] = {}

        def cb(_status: int, _data: Any) -> None:
            pass

        for _ in range(7):
            for name, d in descs.items():
                gc.disable()
                t0 = time.process_time()
                for o in offs:
                    d.read(o, 4096, cb)
                t1 = time.process_time()
                for o in offs:
                    d.write(o, buf, cb)
                t2 = time.process_time()
                gc.enable()
                b = best.setdefault(name, [1e9, 1e9])
                b[0] = min(b[0], (t1 - t0) / len(offs) * 1e9)
                b[1] = min(b[1], (t2 - t1) / len(offs) * 1e9)
        labels = {"B": "malloc", "lvs/thick": "thick lvol", "lvs/thin": "thin lvol"}
        for name, (r, w) in best.items():
            label = labels[name]
            print(f"{label:10s}: read {r:5.0f} ns, write {w:5.0f} ns per 4 KiB request")
        for d in descs.values():
            d.close()
        await layer.shutdown()

    asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtime", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", default="256M")
    ap.add_argument("--load", default="250,500,1000")
    ap.add_argument("--micro", action="store_true")
    a = ap.parse_args()
    if a.micro:
        micro()
        return
    size = int(a.size[:-1]) * MiB if a.size.endswith("M") else int(a.size)
    with tempfile.TemporaryDirectory(prefix="lvbench", dir="/tmp") as d:
        tmp = Path(d)
        t = Target(tmp, "io")
        try:
            thick_vs_base(t, tmp, size, a.runtime, a.rounds)
        finally:
            t.stop()
        for n in (int(x) for x in a.load.split(",") if x):
            load_time(tmp, n)


if __name__ == "__main__":
    main()
