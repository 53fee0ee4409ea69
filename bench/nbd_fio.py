"""pybdev's network NBD export against nbdkit and qemu-nbd, measured with fio's nbd engine.

All servers export a RAM-backed disk over a Unix socket: pybdev a malloc bdev
(``nbd_start_disk``), ``nbdkit memory`` (its sparse allocator),
``qemu-nbd`` on a file in /dev/shm (``--cache=writeback``).  Each disk is filled once
(so no server pays first-write allocation in the timed runs), then the workloads run
``--rounds`` times, servers interleaved within a round; figures are medians over rounds,
ratios the median of the per-round ratios.  Printed:
IOPS, MiB/s, mean and p99 latency, the server's CPU time per I/O, and ratios to the
peers.  An SVG of the IOPS ratios goes to docs/img/ (and a PNG when rsvg-convert, from
librsvg2-bin, is installed).

    python bench/nbd_fio.py [--runtime 5] [--rounds 1] [--size 1G] [--json out.json]
                            [--servers pybdev,nbdkit,qemu-nbd] [--profile out.prof]
    python bench/nbd_fio.py --micro
    python bench/nbd_fio.py --placement [--workloads rr4k_qd1,rw4k_qd32] [--json out.json]

``--profile`` runs the pybdev target under cProfile and prints where its time went;
``--micro`` measures the server's CPU per request in process (no sockets, no client).
``--placement`` runs the workloads with the server and fio pinned to one CPU (``same``),
to two different CPUs (``split``), and left to the scheduler (``free``): a QD1 round trip
between two CPUs costs two cross-CPU wake-ups, which on a VM whose idle vCPUs halt is most
of its time, and a server with many threads (nbdkit) avoids some of them by having one
on the client's CPU. Pinned, the servers compete on their own work.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_US = 50  # pybdev-poll's window: a QD1 client's turnaround here is 10-20 µs

WORKLOADS: dict[str, list[str]] = {
    "rr4k_qd1": ["--rw=randread", "--bs=4k", "--iodepth=1"],
    "rw4k_qd1": ["--rw=randwrite", "--bs=4k", "--iodepth=1"],
    "rr4k_qd32": ["--rw=randread", "--bs=4k", "--iodepth=32"],
    "rw4k_qd32": ["--rw=randwrite", "--bs=4k", "--iodepth=32"],
    "sr128k_qd8": ["--rw=read", "--bs=128k", "--iodepth=8"],
    "sw1m_qd4": ["--rw=write", "--bs=1m", "--iodepth=4"],
    # Four clients at once (one connection each): what several connections cost the server.
    "rr4k_4x1": ["--rw=randread", "--bs=4k", "--iodepth=1", "--numjobs=4",
                 "--group_reporting"],
    "rr4k_4x8": ["--rw=randread", "--bs=4k", "--iodepth=8", "--numjobs=4",
                 "--group_reporting"],
}


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


class Server:
    """An NBD server process on a Unix socket, with its CPU time readable from /proc."""

    def __init__(self, name: str, argv: list[str], sock: Path, uri: str,
                 log: Path, ready: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.uri = uri
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=ROOT, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 60
        while not (ready or sock).exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start; see {log}")
            time.sleep(0.05)

    def cpu_seconds(self) -> tuple[float, float]:
        """User and system CPU time of the server process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # utime, stime

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@contextlib.contextmanager
def servers(names: list[str], size: int, tmp: Path, profile: str | None) -> Iterator[
        list[Server]]:
    started: list[Server] = []
    try:
        for name in names:
            if name in ("pybdev", "pybdev-tcp", "pybdev-asyncio", "pybdev-poll"):
                sock = tmp / f"{name}.sock"
                uri = f"nbd+unix:///Malloc0?socket={sock}"
                if name == "pybdev-tcp":
                    uri = "nbd://127.0.0.1:0/Malloc0"
                cfg = tmp / f"{name}.json"
                cfg.write_text(json.dumps({"subsystems": [
                    {"subsystem": "bdev", "config": [{"method": "bdev_malloc_create", "params": {
                        "name": "Malloc0", "num_blocks": size // 512, "block_size": 512}}]},
                    {"subsystem": "nbd", "config": [{"method": "nbd_start_disk", "params": {
                        "bdev_name": "Malloc0", "nbd_device": uri}}]}]}))
                py = [sys.executable]
                if profile and name in ("pybdev", "pybdev-asyncio"):
                    py += ["-m", "cProfile", "-o", profile]
                # pybdev-poll: adaptive polling on (--nbd-poll-us), CPU for latency.
                extra = ["--nbd-poll-us", str(POLL_US)] if name == "pybdev-poll" else []
                rpc = tmp / f"{name}-rpc.sock"
                # pybdev-asyncio: asyncio's own loop, what a plain `pip install` runs.
                env = {"PYBDEV_EVENT_LOOP": "asyncio"} if name == "pybdev-asyncio" else {}
                s = Server(name, [*py, "-m", "pybdev", "-r", str(rpc), "--json", str(cfg), *extra],
                           sock, uri, tmp / f"{name}.log", ready=rpc, env=env)
                if name == "pybdev-tcp":
                    s.uri = _wait_tcp_uri(rpc)
                else:
                    _wait_for(sock)
            elif name == "nbdkit":
                sock = tmp / "nbdkit.sock"
                s = Server(name, ["nbdkit", "-f", "-U", str(sock), "memory", str(size)], sock,
                           f"nbd+unix:///?socket={sock}", tmp / "nbdkit.log")
            elif name == "ceiling":
                sock = tmp / "ceiling.sock"
                s = Server(name, [sys.executable, str(ROOT / "bench" / "nbd_ceiling.py"),
                                  str(sock), str(size)], sock,
                           f"nbd+unix:///?socket={sock}", tmp / "ceiling.log")
            elif name == "qemu-nbd":
                sock = tmp / "qemu.sock"
                image = Path(tempfile.mkdtemp(dir="/dev/shm")) / "disk.raw"
                with open(image, "wb") as f:
                    f.truncate(size)
                # -e 8: up to 8 clients at once (qemu-nbd's default is one).
                s = Server(name, ["qemu-nbd", "-f", "raw", "-t", "-e", "8", "-k", str(sock),
                                  "-x", "disk", "--cache=writeback", str(image)], sock,
                           f"nbd+unix:///disk?socket={sock}", tmp / "qemu.log")
                s.image = image  # type: ignore[attr-defined]
            else:
                raise SystemExit(f"unknown server {name}")
            started.append(s)
        yield started
    finally:
        for s in started:
            s.stop()
            image = getattr(s, "image", None)
            if image is not None:
                shutil.rmtree(image.parent, ignore_errors=True)


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} did not appear")
        time.sleep(0.05)


def _wait_tcp_uri(rpc: Path) -> str:
    sys.path.insert(0, str(ROOT))
    from pybdev.rpc.client import RpcClient

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception), RpcClient(str(rpc)) as c:
            disks = c.call("nbd_get_disks")
            if disks:
                return str(disks[0]["nbd_device"])
        time.sleep(0.1)
    raise SystemExit("pybdev-tcp did not export")


def fio(uri: str, args: list[str], runtime: float, ramp: float, size: int) -> dict[str, Any]:
    argv = ["fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--size={size}",
            "--time_based", f"--runtime={runtime}", f"--ramp_time={ramp}",
            "--output-format=json", *args]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=runtime + ramp + 60)
    if res.returncode != 0:
        raise SystemExit(f"fio failed: {' '.join(argv)}\n{res.stdout}\n{res.stderr}")
    job = json.loads(res.stdout[res.stdout.index("{"):])["jobs"][0]
    side = job["read"] if job["read"]["io_bytes"] else job["write"]
    p99 = side["clat_ns"].get("percentile", {}).get("99.000000", 0)
    return {"iops": side["iops"], "mib_s": side["bw_bytes"] / (1 << 20),
            "lat_us": side["lat_ns"]["mean"] / 1000, "p99_us": p99 / 1000,
            "ios": side["total_ios"], "client_cpu": job["usr_cpu"] + job["sys_cpu"]}


def prefill(s: Server, size: int) -> None:
    subprocess.run(["fio", "--name=fill", "--ioengine=nbd", f"--uri={s.uri}", f"--size={size}",
                    "--rw=write", "--bs=1m", "--iodepth=4", "--buffer_pattern=0x5a"],
                   capture_output=True, check=True, timeout=600)


def _servers_wanted(args: argparse.Namespace) -> list[str]:
    """The server names asked for, once fio and the peers among them are known installed."""
    names: list[str] = args.servers.split(",")
    missing = [t for t in ["fio", *(n for n in names if n in ("nbdkit", "qemu-nbd"))]
               if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)} (apt-get install fio nbdkit qemu-utils)")
    return names


def measure(args: argparse.Namespace) -> dict[str, dict[str, list[dict[str, Any]]]]:
    names = _servers_wanted(args)
    size = parse_size(args.size)
    workloads = [w for w in WORKLOADS if not args.workloads or w in args.workloads.split(",")]
    results: dict[str, dict[str, list[dict[str, Any]]]] = {w: {n: [] for n in names}
                                                           for w in workloads}
    with tempfile.TemporaryDirectory(prefix="nbdbench", dir="/tmp") as d, \
            servers(names, size, Path(d), args.profile) as started:
        for s in started:
            prefill(s, size)
        for rnd in range(args.rounds):
            for w in workloads:
                for s in started:
                    user0, sys0 = s.cpu_seconds()
                    r = fio(s.uri, WORKLOADS[w], args.runtime, args.ramp, size)
                    user1, sys1 = s.cpu_seconds()
                    cpu = user1 - user0 + sys1 - sys0
                    r["server_cpu"] = 100 * cpu / (args.runtime + args.ramp)
                    # CPU over ramp + run, I/Os of the run only: scale to the run.
                    per_io = 1e6 * args.runtime / (args.runtime + args.ramp) / max(1, r["ios"])
                    r["server_us_io"] = cpu * per_io
                    r["server_sys_us_io"] = (sys1 - sys0) * per_io  # the kernel's share
                    r["load1"] = os.getloadavg()[0]
                    results[w][s.name].append(r)
                    print(f"round {rnd + 1} {w:11} {s.name:10} {r['iops']:9.0f} IOPS "
                          f"{r['mib_s']:7.0f} MiB/s", file=sys.stderr, flush=True)
    return results


PLACEMENTS = ("split", "same", "free")


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` on ``cpus`` (threads created later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus)


def measure_placement(args: argparse.Namespace) -> dict[str, dict[str, dict[str, list[
        dict[str, Any]]]]]:
    """Like :func:`measure`, under each of PLACEMENTS in turn, interleaved within a round."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--placement needs two CPUs")
    server_cpu, other_cpu = cpus[0], cpus[1]
    fio_cpus = {"split": str(other_cpu), "same": str(server_cpu), "free": ""}
    names = _servers_wanted(args)
    size = parse_size(args.size)
    workloads = [w for w in WORKLOADS if not args.workloads or w in args.workloads.split(",")]
    results: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {
        pl: {w: {n: [] for n in names} for w in workloads} for pl in PLACEMENTS}
    with tempfile.TemporaryDirectory(prefix="nbdbench", dir="/tmp") as d, \
            servers(names, size, Path(d), None) as started:
        for s in started:
            prefill(s, size)
        for rnd in range(args.rounds):
            for pl in PLACEMENTS:
                for w in workloads:
                    for s in started:
                        _pin(s.proc.pid, {server_cpu} if pl != "free" else set(cpus))
                        extra = [f"--cpus_allowed={fio_cpus[pl]}"] if fio_cpus[pl] else []
                        r = fio(s.uri, [*WORKLOADS[w], *extra], args.runtime, args.ramp, size)
                        results[pl][w][s.name].append(r)
                        print(f"round {rnd + 1} {pl:5} {w:11} {s.name:12} {r['iops']:9.0f} "
                              "IOPS", file=sys.stderr, flush=True)
    return results


def report_placement(results: dict[str, dict[str, dict[str, list[dict[str, Any]]]]]) -> str:
    """One table per workload: IOPS by placement and server, and the ratio to nbdkit."""
    lines = []
    for w in next(iter(results.values())):
        names = list(results[PLACEMENTS[0]][w])
        head = ["placement", *[f"{n} IOPS" for n in names],
                *[f"{n} / nbdkit" for n in names if n != "nbdkit" and "nbdkit" in names]]
        lines += [f"\n#### {w}\n", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for pl, by_workload in results.items():
            by = by_workload[w]
            row = [pl, *[f"{median(by[n], 'iops'):.0f}" for n in names]]
            if "nbdkit" in names:
                row += [f"{ratio(by[n], by['nbdkit']):.2f}" for n in names if n != "nbdkit"]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def ratio(runs: list[dict[str, Any]], peer: list[dict[str, Any]]) -> float:
    """Median over rounds of the per-round IOPS ratio: servers in one round ran back to
    back, so the ratio cancels most of the machine's load of that moment."""
    return statistics.median(r["iops"] / p["iops"] for r, p in zip(runs, peer, strict=True))


def report(results: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    lines = []
    for w, by_server in results.items():
        names = list(by_server)
        peers = [p for p in ("nbdkit", "qemu-nbd", "ceiling") if p in names]
        head = ["server", "IOPS", "MiB/s", "mean lat us", "p99 us", "server CPU %",
                "server us/IO", "of which sys", *[f"x {p}" for p in peers]]
        lines += [f"\n### {w}\n", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)]
        for n in names:
            runs = by_server[n]
            iops = median(runs, "iops")
            row = [n, f"{iops:.0f}", f"{median(runs, 'mib_s'):.0f}",
                   f"{median(runs, 'lat_us'):.1f}", f"{median(runs, 'p99_us'):.0f}",
                   f"{median(runs, 'server_cpu'):.0f}", f"{median(runs, 'server_us_io'):.1f}",
                   f"{median(runs, 'server_sys_us_io'):.1f}"]
            row += [f"{ratio(runs, by_server[p]):.2f}" for p in peers]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def svg(results: dict[str, dict[str, list[dict[str, Any]]]], path: Path, title: str) -> None:
    """Grouped bars: IOPS of each server relative to nbdkit, per workload."""
    workloads = list(results)
    names = list(next(iter(results.values())))
    base = "nbdkit" if "nbdkit" in names else names[0]
    ratios = {w: {n: ratio(results[w][n], results[w][base]) for n in names}
              for w in workloads}
    top = max(2.0, max(v for r in ratios.values() for v in r.values()) * 1.1)
    width, height, left, bottom, plot_top = 860, 420, 60, 70, 50
    plot_h = height - bottom - plot_top
    group = (width - left - 20) / len(workloads)
    bar = group * 0.8 / len(names)
    colors = ["#2b6cb0", "#d69e2e", "#718096", "#38a169", "#e53e3e"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15">{title}</text>']

    def y(v: float) -> float:
        return plot_top + plot_h * (1 - v / top)

    tick = 0.0
    while tick <= top + 1e-9:
        out.append(f'<line x1="{left}" x2="{width - 20}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
                   f'stroke="{"#000" if tick == 1 else "#ddd"}" '
                   f'stroke-dasharray="{"4,3" if tick == 1 else ""}"/>')
        out.append(f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">'
                   f'{tick:.1f}x</text>')
        tick += 0.5
    for i, w in enumerate(workloads):
        x0 = left + i * group + group * 0.1
        for j, n in enumerate(names):
            v = ratios[w][n]
            x = x0 + j * bar
            out.append(f'<rect x="{x:.1f}" y="{y(v):.1f}" width="{bar - 2:.1f}" '
                       f'height="{y(0) - y(v):.1f}" fill="{colors[j % len(colors)]}"/>')
            out.append(f'<text x="{x + bar / 2 - 1:.1f}" y="{y(v) - 3:.1f}" '
                       f'text-anchor="middle" font-size="10">{v:.2f}</text>')
        out.append(f'<text x="{left + (i + 0.5) * group:.1f}" y="{height - bottom + 18}" '
                   f'text-anchor="middle">{w}</text>')
    for j, n in enumerate(names):
        lx = left + j * 150
        out.append(f'<rect x="{lx}" y="{height - 30}" width="12" height="12" '
                   f'fill="{colors[j % len(colors)]}"/>')
        out.append(f'<text x="{lx + 18}" y="{height - 20}">{n}</text>')
    out.append(f'<text x="14" y="{plot_top + plot_h / 2}" transform="rotate(-90 14 '
               f'{plot_top + plot_h / 2})" text-anchor="middle">IOPS / {base} IOPS</text>')
    out.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")


def micro(batch: int, rounds: int = 3000) -> dict[str, float]:
    """CPU µs per request of the server's hot path, in process, without sockets.

    A connection is put straight into the transmission phase on a malloc bdev and fed
    batches of ``batch`` random 4 KiB READs (or WRITEs) through ``get_buffer`` /
    ``buffer_updated``, as the event loop would; replies go to a transport that drops
    them.  Also measured alone: the descriptor's read and the request parser, the parts
    of that cost outside the connection.  Timed with process_time (CPU, not wall clock).
    """
    import asyncio
    import random

    sys.path.insert(0, str(ROOT))
    from pybdev.bdev.core import BdevLayer
    from pybdev.bdev.malloc import MallocModule
    from pybdev.nbd.server import NbdConnection, NetworkServer, describe_export
    from pybdev.proto import nbd as proto

    class Sink:
        def writelines(self, chunks: list[Any]) -> None:
            pass

        def write(self, data: Any) -> None:
            pass

        def is_closing(self) -> bool:
            return False

        def get_extra_info(self, name: str) -> None:
            return None

    class Stub:
        def __getattr__(self, name: str) -> Any:
            return set() if name == "connections" else (lambda *a: None)

    async def run() -> dict[str, float]:
        size = 256 << 20
        layer = BdevLayer()
        module = MallocModule(layer)
        layer.add_module(module)
        module.create(name="M0", block_size=512, num_blocks=size // 512)
        desc = layer.open("M0", write=True)
        export = Stub()
        export.desc = desc
        export.name = "M0"
        export.connections = set()
        export.connections_total = 0
        export.bytes_read = export.bytes_written = 0
        listener = Stub()
        listener.network = NetworkServer(max_buffered=1 << 30)  # type: ignore[attr-defined]
        conn = NbdConnection(listener)  # type: ignore[arg-type]
        conn.transport = Sink()  # type: ignore[assignment]
        conn._handshake = None
        info = describe_export("M0", desc.bdev)
        conn._begin_transmission(export, proto.TransmissionReady(  # type: ignore[arg-type]
            export=info, name="M0", flags=info.flags | proto.NBD_FLAG_HAS_FLAGS,
            structured_replies=True, meta_contexts={}, block_size_negotiated=True,
            via_go=True))
        offsets = [random.randrange(size // 4096) * 4096 for _ in range(batch)]
        out: dict[str, float] = {}
        for name, typ in (("read", proto.NBD_CMD_READ), ("write", proto.NBD_CMD_WRITE)):
            data = b"".join(proto.encode_request(typ, i, o, 4096)
                            + (os.urandom(4096) if typ == proto.NBD_CMD_WRITE else b"")
                            for i, o in enumerate(offsets))
            t = time.process_time()
            for _ in range(rounds):
                conn.get_buffer(-1)[:len(data)] = data
                conn.buffer_updated(len(data))
            out[f"connection {name}"] = (time.process_time() - t) / (rounds * batch) * 1e6
        sink = []
        t = time.process_time()
        for _ in range(rounds):
            for o in offsets:
                desc.read(o, 4096, lambda status, data: sink.append(data))
            sink.clear()
        out["of which desc.read"] = (time.process_time() - t) / (rounds * batch) * 1e6
        reqs = b"".join(proto.encode_request(0, i, o, 4096) for i, o in enumerate(offsets))
        t = time.process_time()
        for _ in range(rounds):
            proto.parse_requests(reqs)
        out["of which parse_requests"] = (time.process_time() - t) / (rounds * batch) * 1e6
        return out

    return asyncio.run(run())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runtime", type=float, default=5, help="seconds measured per run")
    p.add_argument("--ramp", type=float, default=1, help="seconds of ramp before each run")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--size", default="1G", help="disk size (K, M, G suffixes)")
    p.add_argument("--servers", default="pybdev,nbdkit,qemu-nbd",
                   help="comma list of pybdev, pybdev-asyncio (asyncio's own loop), "
                        f"pybdev-poll (--nbd-poll-us {POLL_US}), "
                        "pybdev-tcp, nbdkit, qemu-nbd, ceiling (bench/nbd_ceiling.py: a "
                        "minimal blocking Python server, the Unix-socket ceiling)")
    p.add_argument("--workloads", default="", help=f"comma list of {', '.join(WORKLOADS)}")
    p.add_argument("--json", help="write the raw results here")
    p.add_argument("--svg", default=str(ROOT / "docs" / "img" / "nbd_fio.svg"),
                   help="plot path ('' for none)")
    p.add_argument("--profile", help="run pybdev under cProfile, writing this file")
    p.add_argument("--micro", action="store_true",
                   help="measure the server's CPU per request in process instead")
    p.add_argument("--placement", action="store_true",
                   help="run with the server and fio on one CPU, on two, and unpinned")
    args = p.parse_args()
    if args.micro:
        for batch in (1, 32):
            for what, us in micro(batch).items():
                print(f"batch {batch:2}: {what:24} {us:5.2f} µs/request")
        return 0
    if args.placement:
        placed = measure_placement(args)
        print(report_placement(placed))
        if args.json:
            Path(args.json).write_text(json.dumps(placed, indent=1) + "\n")
        return 0
    results = measure(args)
    text = report(results)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.svg:
        svg(results, Path(args.svg), f"fio nbd engine, Unix socket, {args.size} RAM disk: "
                                     f"IOPS relative to nbdkit memory (median of {args.rounds})")
        if shutil.which("rsvg-convert"):  # librsvg2-bin: a PNG beside the SVG
            subprocess.run(["rsvg-convert", args.svg, "-o", str(Path(args.svg).with_suffix(
                ".png"))], check=False)
    if args.profile:
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
