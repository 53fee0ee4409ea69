#!/usr/bin/env python3
"""What the Python binding costs: 4 KiB random I/O at queue depth 32 on one RBD image, through

- ``rbd bench`` (C++, librbd directly): the ceiling on this cluster and machine;
- pybdev.ceph (cffi ABI mode; librbd signals an eventfd, the asyncio loop collects
  completions with rbd_poll_io_events), in the project's venv;
- Debian's python3-rbd (Cython) under /usr/bin/python3, when it is installed: the alternative
  the decision weighed. Its completion callbacks run Python on librbd's thread; they queue
  the result and wake the same kind of asyncio loop with call_soon_threadsafe.

Each runs in its own process on the same image of a throwaway cluster (tests/ceph/cluster.py)
so client CPU (user+sys of that process, librbd's threads included) is comparable.
Prints a table and writes ``bench/results/rbd_binding.json``. A few seconds per run:

    .venv/bin/python bench/rbd_binding.py [--seconds 3] [--qd 32] [--bs 4096]

This file is also its own worker (``--driver``); keep its top level standard-library only,
because python3-rbd runs it under the system Python, where pybdev is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"
IMAGE = "bench"

Submit = Callable[[int, int, Callable[[int], None]], None]


# ---- worker side (runs in a child process) -------------------------------------------------


class _Sink:
    """Delivery for the python3-rbd worker: completions queue up and a burst costs one loop
    wake-up (what pybdev.ceph did before it moved to the eventfd)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ready: deque[tuple[Callable[[int], None], int]] = deque()
        self.armed = False

    def push(self, cb: Callable[[int], None], ret: int) -> None:
        self.ready.append((cb, ret))
        if not self.armed:
            self.armed = True
            self.loop.call_soon_threadsafe(self.drain)

    def drain(self) -> None:
        self.armed = False
        while self.ready:
            cb, ret = self.ready.popleft()
            cb(ret)


async def _closed_loop(
    submit: Submit, *, seconds: float, qd: int, bs: int, nblocks: int
) -> dict[str, Any]:
    """Keep ``qd`` requests in flight for ``seconds``; latency of each, errors counted."""
    loop = asyncio.get_running_loop()
    rng = random.Random(42)
    lat: list[int] = []
    start = [0] * qd
    state = {"ops": 0, "errors": 0, "active": qd}
    finished = loop.create_future()
    perf = time.perf_counter_ns
    deadline = perf() + int(seconds * 1e9)

    def issue(slot: int) -> None:
        start[slot] = perf()
        submit(slot, rng.randrange(nblocks) * bs, callbacks[slot])

    def make_cb(slot: int) -> Callable[[int], None]:
        def cb(ret: int) -> None:
            now = perf()
            lat.append(now - start[slot])
            state["ops"] += 1
            if ret < 0:
                state["errors"] += 1
            if now < deadline:
                issue(slot)
            else:
                state["active"] -= 1
                if state["active"] == 0:
                    finished.set_result(None)
        return cb

    callbacks = [make_cb(i) for i in range(qd)]
    cpu0 = time.process_time()
    t0 = perf()
    for slot in range(qd):
        issue(slot)
    await finished
    elapsed = (perf() - t0) / 1e9
    cpu = time.process_time() - cpu0
    lat.sort()
    n = len(lat)
    return {
        "ops": n,
        "errors": state["errors"],
        "seconds": elapsed,
        "iops": n / elapsed,
        "p50_us": lat[n // 2] / 1e3,
        "p99_us": lat[min(n - 1, n * 99 // 100)] / 1e3,
        "cpu_us_per_op": cpu / n * 1e6,
    }


async def _worker_cffi(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from pybdev import ceph

    cluster = ceph.Cluster(None, "admin", config_file=args.conf)
    cluster.connect()
    io = cluster.open_ioctx("rbd")
    img = ceph.open_image(io, args.image, loop=asyncio.get_running_loop())
    data = os.urandom(args.bs)
    bufs = [bytearray(args.bs) for _ in range(args.qd)]
    nblocks = img.get_size() // args.bs

    def submit_write(slot: int, off: int, cb: Callable[[int], None]) -> None:
        img.aio_write(off, data, cb)

    def submit_read(slot: int, off: int, cb: Callable[[int], None]) -> None:
        img.aio_read(off, bufs[slot], cb)

    try:
        return await _closed_loop(
            submit_write if args.op == "write" else submit_read,
            seconds=args.seconds, qd=args.qd, bs=args.bs, nblocks=nblocks,
        )
    finally:
        img.close()
        cluster.shutdown()


async def _worker_python3_rbd(args: argparse.Namespace) -> dict[str, Any]:
    import rados  # type: ignore[import-not-found]
    import rbd  # type: ignore[import-not-found]

    cluster = rados.Rados(conffile=args.conf, rados_id="admin")
    cluster.connect()
    io = cluster.open_ioctx("rbd")
    img = rbd.Image(io, args.image)
    sink = _Sink(asyncio.get_running_loop())
    data = os.urandom(args.bs)
    nblocks = img.size() // args.bs

    def submit_write(slot: int, off: int, cb: Callable[[int], None]) -> None:
        img.aio_write(data, off, lambda comp: sink.push(cb, comp.get_return_value()))

    def submit_read(slot: int, off: int, cb: Callable[[int], None]) -> None:
        img.aio_read(off, args.bs, lambda comp, _data: sink.push(cb, comp.get_return_value()))

    try:
        return await _closed_loop(
            submit_write if args.op == "write" else submit_read,
            seconds=args.seconds, qd=args.qd, bs=args.bs, nblocks=nblocks,
        )
    finally:
        img.close()
        io.close()
        cluster.shutdown()


def worker_main(args: argparse.Namespace) -> None:
    fn = _worker_cffi if args.driver == "cffi" else _worker_python3_rbd
    print(json.dumps(asyncio.run(fn(args))))


# ---- parent side -----------------------------------------------------------------------


def _load_cluster_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "pybdev_ceph_test_cluster", ROOT / "tests" / "ceph" / "cluster.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look the module up by name
    spec.loader.exec_module(mod)
    return mod


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _run_worker(python: str, driver: str, op: str, conf: Path, args: argparse.Namespace
                ) -> dict[str, Any]:
    cmd = [python, str(Path(__file__).resolve()), "--driver", driver, "--op", op,
           "--conf", str(conf), "--image", IMAGE, "--seconds", str(args.seconds),
           "--qd", str(args.qd), "--bs", str(args.bs)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"{driver} {op} worker failed:\n{out.stderr}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _rbd_bench(cluster: Any, op: str, total_ops: int, args: argparse.Namespace
               ) -> dict[str, Any]:
    cpu0 = _children_cpu()
    t0 = time.monotonic()
    out = cluster.rbd(
        "bench", "--io-type", op, "--io-size", str(args.bs), "--io-threads", str(args.qd),
        "--io-total", str(total_ops * args.bs), "--io-pattern", "rand",
        f"{cluster.pool}/{IMAGE}", timeout=120,
    )
    wall = time.monotonic() - t0
    cpu = _children_cpu() - cpu0
    m = re.search(r"elapsed:\s*(\d+)\s+ops:\s*(\d+)\s+ops/sec:\s*([\d.]+)", out)
    if not m:
        raise RuntimeError(f"cannot parse rbd bench output:\n{out}")
    ops = int(m.group(2))
    return {
        "ops": ops, "seconds": ops / float(m.group(3)), "iops": float(m.group(3)),
        "wall_seconds": wall, "cpu_us_per_op": cpu / ops * 1e6,
        "p50_us": None, "p99_us": None, "errors": 0,
    }


def _has_python3_rbd() -> bool:
    if not Path(SYSTEM_PYTHON).exists():
        return False
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import rbd, rados"], capture_output=True)
    return probe.returncode == 0


def parent_main(args: argparse.Namespace) -> None:
    cl = _load_cluster_module()
    reason = cl.unavailable_reason()
    if reason:
        sys.exit(f"rbd_binding: {reason}")
    tmp = Path(tempfile.mkdtemp(prefix="pybdev-rbd-bench-"))
    cluster = cl.CephCluster(tmp / "c", objectstore=args.objectstore)
    results: list[dict[str, Any]] = []
    try:
        cluster.start()
        print(f"cluster ({args.objectstore}) ready in {cluster.startup_seconds:.1f} s",
              file=sys.stderr)
        cluster.rbd("create", "--size", f"{args.image_mib}M", f"{cluster.pool}/{IMAGE}")
        # Unwritten objects read as zeros without asking the OSD; fill the image so reads
        # are real.
        cluster.rbd("bench", "--io-type", "write", "--io-size", "4M", "--io-threads", "4",
                    "--io-total", f"{args.image_mib}M", "--io-pattern", "seq",
                    f"{cluster.pool}/{IMAGE}", timeout=120)
        drivers: list[tuple[str, str, str]] = [("pybdev.ceph (cffi)", sys.executable, "cffi")]
        if args.python3_rbd and _has_python3_rbd():
            drivers.append(("python3-rbd", SYSTEM_PYTHON, "python3-rbd"))
        for _ in range(args.repeat):
            for op in ("write", "read"):
                ref_ops = 0
                for label, python, driver in drivers:
                    r = _run_worker(python, driver, op, cluster.conf_path, args)
                    ref_ops = max(ref_ops, r["ops"])
                    results.append({"op": op, "driver": label, **r})
                # Sized to run about as long as the Python runs did.
                r = _rbd_bench(cluster, op, max(ref_ops, 1000), args)
                results.append({"op": op, "driver": "rbd bench", **r})
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{args.bs} B random, QD{args.qd}, {args.seconds:g} s runs, "
          f"{args.image_mib} MiB image, {args.objectstore} OSD, {os.cpu_count()} cores")
    print(f"{'op':6} {'driver':20} {'IOPS':>8} {'vs rbd bench':>12} {'p50 us':>8} "
          f"{'p99 us':>8} {'client CPU us/op':>17}")
    for op in ("write", "read"):
        rows = [r for r in results if r["op"] == op]
        best = max((r["iops"] for r in rows if r["driver"] == "rbd bench"), default=0.0)
        for r in rows:
            ratio = f"{r['iops'] / best:.2f}" if best else "-"
            p50 = f"{r['p50_us']:.0f}" if r["p50_us"] is not None else "-"
            p99 = f"{r['p99_us']:.0f}" if r["p99_us"] is not None else "-"
            print(f"{op:6} {r['driver']:20} {r['iops']:8.0f} {ratio:>12} {p50:>8} {p99:>8} "
                  f"{r['cpu_us_per_op']:17.1f}")
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "rbd_binding.json").write_text(json.dumps(
        {"bs": args.bs, "qd": args.qd, "seconds": args.seconds,
         "objectstore": args.objectstore, "results": results}, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--qd", type=int, default=32)
    p.add_argument("--bs", type=int, default=4096)
    p.add_argument("--image-mib", type=int, default=256)
    p.add_argument("--objectstore", default="memstore", choices=["memstore", "bluestore"])
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--no-python3-rbd", dest="python3_rbd", action="store_false")
    # worker mode
    p.add_argument("--driver", choices=["cffi", "python3-rbd"], help=argparse.SUPPRESS)
    p.add_argument("--op", choices=["write", "read"], help=argparse.SUPPRESS)
    p.add_argument("--conf", help=argparse.SUPPRESS)
    p.add_argument("--image", default=IMAGE, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.driver:
        worker_main(args)
    else:
        parent_main(args)


if __name__ == "__main__":
    main()
