"""The control plane of one target: RPC round trip, pipelined calls, many bdevs, memory, idle CPU.

Against a real target process (``python -m pybdev``) over its Unix socket:

* round trip: one client, one ``spdk_get_version`` at a time (µs per call, median of rounds);
* pipelined: ``--pipeline`` requests written at once, then every answer read (calls/s);
* ``--bdevs`` null bdevs created (pipelined in batches of 1,000), listed
  (``bdev_get_bdevs``), saved (``framework_get_config`` of every subsystem, what
  ``save_config`` does) and replayed (a second target started with ``--json`` of the saved
  config, timed until it answers; an empty target's start-up is given beside it);
* memory: the target's RSS before and after the bdevs, per bdev;
* idle CPU: the target's CPU time over ``--idle`` seconds with the bdevs and nothing to do.

    python bench/control_plane.py [--bdevs 10000] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
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

from pybdev.rpc.client import RpcClient  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Target:
    def __init__(self, sock: Path, *args: str) -> None:
        self.sock = sock
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "pybdev", "-r", str(sock), *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     cwd=ROOT)
        self.ready_s = self._wait()

    def _wait(self) -> float:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit("target exited")
            if self.sock.exists():
                try:
                    with RpcClient(str(self.sock), timeout=600) as c:
                        c.call("spdk_get_version")
                    return time.perf_counter() - self.t0
                except OSError:
                    pass
            time.sleep(0.01)
        raise SystemExit("target did not come up")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(path))
    return s


def call(path: Path, method: str, params: dict[str, Any] | None = None) -> Any:
    """One call, its answer read whole before decoding (RpcClient retries its decoder
    on every chunk, which is quadratic for a 10 MB answer: the client's cost, not the
    target's)."""
    s = connect(path)
    req = {"jsonrpc": "2.0", "method": method, "id": 1}
    if params:
        req["params"] = params
    s.sendall(json.dumps(req).encode())
    chunks = []
    answer: Any = None
    while answer is None:
        chunk = s.recv(1 << 20)
        if not chunk:
            raise SystemExit(f"{method}: the target closed the connection")
        chunks.append(chunk)
        if chunk.endswith(b"\n"):  # an answer ends with a newline (so may a chunk)
            try:
                answer = json.loads(b"".join(chunks))
            except ValueError:
                continue
    s.close()
    if "error" in answer:
        raise SystemExit(f"{method}: {answer['error']}")
    return answer["result"]


def round_trip_us(path: Path, n: int) -> float:
    s = connect(path)
    req = b'{"jsonrpc":"2.0","method":"spdk_get_version","id":1}'
    t = time.perf_counter()
    for _ in range(n):
        s.sendall(req)
        buf = b""
        while not buf.endswith(b"\n"):
            buf += s.recv(65536)
    elapsed = time.perf_counter() - t
    s.close()
    return elapsed / n * 1e6


def pipelined(path: Path, requests: list[bytes]) -> float:
    """Write every request, then read as many answers; seconds."""
    s = connect(path)
    t = time.perf_counter()
    # Written from a thread while this one reads: the server stops reading while its
    # answers wait, so a client that writes everything first would deadlock.
    sender = threading.Thread(target=s.sendall, args=(b"".join(requests),))
    sender.start()
    left = len(requests)
    buf = b""
    while left:
        chunk = s.recv(1 << 20)
        if not chunk:
            raise SystemExit("target closed the connection")
        buf += chunk
        lines = buf.split(b"\n")
        buf = lines.pop()
        left -= len(lines)
    elapsed = time.perf_counter() - t
    sender.join()
    s.close()
    return elapsed


def measure(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"bdevs": args.bdevs}
    with tempfile.TemporaryDirectory(prefix="cpbench", dir="/tmp") as d:
        tmp = Path(d)
        t = Target(tmp / "a.sock")
        try:
            out["empty_start_s"] = t.ready_s
            out["rss_empty_kib"] = t.rss_kib()
            version = b'{"jsonrpc":"2.0","method":"spdk_get_version","id":1}'
            rtt, calls = [], []
            for _ in range(args.rounds):
                rtt.append(round_trip_us(tmp / "a.sock", 5000))
                calls.append(args.pipeline / pipelined(tmp / "a.sock",
                                                       [version] * args.pipeline))
            out["round_trip_us"] = statistics.median(rtt)
            out["pipelined_calls_s"] = statistics.median(calls)
            batch = 1000
            t0 = time.perf_counter()
            for start in range(0, args.bdevs, batch):
                reqs = [json.dumps({"jsonrpc": "2.0", "method": "bdev_null_create", "id": i,
                                    "params": {"name": f"Null{i}", "num_blocks": 1024,
                                               "block_size": 512}}).encode()
                        for i in range(start, min(args.bdevs, start + batch))]
                pipelined(tmp / "a.sock", reqs)
            out["create_s"] = time.perf_counter() - t0
            sock = tmp / "a.sock"
            t0 = time.perf_counter()
            listed = call(sock, "bdev_get_bdevs")
            out["list_s"] = time.perf_counter() - t0
            assert len(listed) == args.bdevs, len(listed)
            t0 = time.perf_counter()
            config = {"subsystems": [
                {"subsystem": s["subsystem"],
                 "config": call(sock, "framework_get_config", {"name": s["subsystem"]})}
                for s in call(sock, "framework_get_subsystems")]}
            out["save_s"] = time.perf_counter() - t0
            out["rss_bdevs_kib"] = t.rss_kib()
            out["bytes_per_bdev"] = (out["rss_bdevs_kib"] - out["rss_empty_kib"]) * 1024 \
                / args.bdevs
            cpu0 = t.cpu_s()
            time.sleep(args.idle)
            out["idle_cpu_pct"] = 100 * (t.cpu_s() - cpu0) / args.idle
        finally:
            t.stop()
        cfg = tmp / "saved.json"
        cfg.write_text(json.dumps(config))
        r = Target(tmp / "b.sock", "--json", str(cfg))
        try:
            out["replay_s"] = r.ready_s
            assert len(call(tmp / "b.sock", "bdev_get_bdevs")) == args.bdevs
        finally:
            r.stop()
    return out


def report(r: dict[str, Any]) -> str:
    n = r["bdevs"]
    return "\n".join([
        "| measurement | value |", "|---|---|",
        f"| RPC round trip (one client, spdk_get_version) | {r['round_trip_us']:.0f} µs |",
        f"| pipelined calls | {r['pipelined_calls_s']:,.0f} calls/s |",
        f"| {n:,} null bdevs: create (pipelined) | {r['create_s']:.2f} s |",
        f"| {n:,} bdevs: bdev_get_bdevs | {r['list_s']:.2f} s |",
        f"| {n:,} bdevs: save (framework_get_config of every subsystem) | {r['save_s']:.2f} s |",
        f"| {n:,} bdevs: replay (--json, start until the first answer) | {r['replay_s']:.2f} s "
        f"(empty target: {r['empty_start_s']:.2f} s) |",
        f"| memory per bdev (RSS) | {r['bytes_per_bdev'] / 1024:.1f} KiB |",
        f"| RSS, empty / with the bdevs | {r['rss_empty_kib'] / 1024:.0f} / "
        f"{r['rss_bdevs_kib'] / 1024:.0f} MiB |",
        f"| CPU while idle (with the bdevs) | {r['idle_cpu_pct']:.2f} % |",
    ])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bdevs", type=int, default=10000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pipeline", type=int, default=20000, help="requests per pipelined burst")
    p.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU measurement")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    r = measure(args)
    print(report(r))
    if args.json:
        args.json.write_text(json.dumps(r, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
