"""Calls per second through pybdev's dispatcher, in process and over the Unix socket.

Decision D1 (docs/decisions/json-rpc-dispatcher.md) rests on these numbers: run
``python bench/rpc_dispatch.py`` and compare with jsonrpcserver if it is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pybdev.app import App, build_parser


async def in_process(n: int) -> float:
    app = App(build_parser().parse_args(["--no-rpc-server"]))
    await app.start()
    raw = json.dumps({"jsonrpc": "2.0", "method": "bdev_get_bdevs", "id": 1,
                      "params": {"name": "Malloc0"}}).encode()
    await app.dispatcher.handle_raw(json.dumps({
        "jsonrpc": "2.0", "method": "bdev_malloc_create", "id": 1,
        "params": {"name": "Malloc0", "num_blocks": 8, "block_size": 512}}).encode())
    start = time.perf_counter()
    for _ in range(n):
        await app.dispatcher.handle_raw(raw)
    elapsed = time.perf_counter() - start
    await app.stop()
    return n / elapsed


def over_socket(n: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        sock_path = str(Path(d) / "b.sock")
        proc = subprocess.Popen([sys.executable, "-m", "pybdev", "-r", sock_path],
                                stderr=subprocess.DEVNULL)
        try:
            while not Path(sock_path).exists():
                time.sleep(0.05)
            time.sleep(0.2)
            s = socket.socket(socket.AF_UNIX)
            s.connect(sock_path)
            req = b'{"jsonrpc":"2.0","method":"spdk_get_version","id":1}'
            start = time.perf_counter()
            for _ in range(n):
                s.sendall(req)
                buf = b""
                while not buf.endswith(b"\n"):
                    buf += s.recv(4096)
            return n / (time.perf_counter() - start)
        finally:
            proc.terminate()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20000)
    args = parser.parse_args()
    print(f"in-process dispatch (bdev_get_bdevs, validated params): "
          f"{asyncio.run(in_process(args.n)):,.0f} calls/s")
    print(f"Unix socket round trip, one client:                    "
          f"{over_socket(args.n // 4):,.0f} calls/s")


if __name__ == "__main__":
    main()
