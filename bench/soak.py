"""Soak: idle connections, stalled writers and a verifying client against one NBD export.

What a careless or hostile local client can make the target hold, measured on its RSS:

1. ``--idle`` connections that connect and send nothing (each should cost a small, bounded
   amount until the handshake timeout closes it);
2. ``--stalled`` clients that finish the handshake, send a WRITE header for 32 MiB and then
   only a trickle of its payload (the server must not allocate the whole payload up front);
3. all the while, one client writes patterned blocks and reads them back, counting
   verified operations and mismatches (there must be none).

The disk is written once before the baseline, so its pages (the malloc bdev's RAM, which
is allocated lazily) do not count as the server's.

RSS is sampled every second and printed as a table, then a summary: RSS before, peak, after
everything closed, and memory per idle connection. ``--json FILE`` keeps the samples.

    python bench/soak.py [--seconds 120] [--idle 1000] [--stalled 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")
PORT = 10931
EXPORT = "Soak0"
SIZE = 256 << 20

# Fixed newstyle handshake and simple replies (the NBD protocol document).
NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = b"IHAVEOPT"
CLIENT_FLAGS = 3  # NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES
OPT_EXPORT_NAME = 1
REQUEST = struct.Struct(">IHHQQI")
REQUEST_MAGIC = 0x25609513
REPLY = struct.Struct(">IIQ")
CMD_READ, CMD_WRITE = 0, 1


def rss(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


async def handshake(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port)
    greeting = await reader.readexactly(18)
    assert greeting[:16] == NBDMAGIC + IHAVEOPT, greeting
    name = EXPORT.encode()
    writer.write(struct.pack(">I", CLIENT_FLAGS) + IHAVEOPT
                 + struct.pack(">II", OPT_EXPORT_NAME, len(name)) + name)
    await reader.readexactly(10)  # size and transmission flags (no zeroes)
    return reader, writer


async def idle(host: str, port: int, n: int, conns: list[asyncio.StreamWriter]) -> None:
    for _ in range(n):
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            break  # refused: the listener's connection limit
        conns.append(writer)


async def stalled(host: str, port: int, n: int, conns: list[asyncio.StreamWriter]) -> None:
    for i in range(n):
        try:
            _, writer = await handshake(host, port)
        except (OSError, asyncio.IncompleteReadError):
            break
        writer.write(REQUEST.pack(REQUEST_MAGIC, 0, CMD_WRITE, i, 0, 32 << 20) + bytes(4096))
        conns.append(writer)


async def verifier(host: str, port: int, stop: asyncio.Event, counts: dict[str, int]) -> None:
    reader, writer = await handshake(host, port)
    rng = random.Random(7)
    handle = 0
    while not stop.is_set():
        offset = rng.randrange(SIZE // 4096) * 4096
        data = rng.randbytes(4096)
        for cmd, payload in ((CMD_WRITE, data), (CMD_READ, b"")):
            handle += 1
            writer.write(REQUEST.pack(REQUEST_MAGIC, 0, cmd, handle, offset, 4096) + payload)
            _, error, got = REPLY.unpack(await reader.readexactly(REPLY.size))
            if error or got != handle:
                counts["errors"] += 1
                continue
            if cmd == CMD_READ:
                counts["verified" if await reader.readexactly(4096) == data
                       else "mismatches"] += 1
    writer.close()


async def prefill(host: str, port: int) -> None:
    """Write the whole disk once, so its RAM is resident before the baseline is taken."""
    reader, writer = await handshake(host, port)
    chunk = bytes(1 << 20)
    for i in range(SIZE // len(chunk)):
        writer.write(REQUEST.pack(REQUEST_MAGIC, 0, CMD_WRITE, i, i * len(chunk), len(chunk))
                     + chunk)
        _, error, _ = REPLY.unpack(await reader.readexactly(REPLY.size))
        assert not error, error
    writer.close()


async def soak(pid: int, args: argparse.Namespace) -> dict[str, Any]:
    host = "127.0.0.1"
    await prefill(host, args.port)
    samples: list[dict[str, Any]] = []
    counts = {"verified": 0, "mismatches": 0, "errors": 0}
    stop = asyncio.Event()
    conns: list[asyncio.StreamWriter] = []
    base = rss(pid)
    start = time.monotonic()
    check = asyncio.ensure_future(verifier(host, args.port, stop, counts))
    await idle(host, args.port, args.idle, conns)
    idle_open = len(conns)
    after_idle = rss(pid)
    await stalled(host, args.port, args.stalled, conns)
    stalled_open = len(conns) - idle_open
    await asyncio.sleep(1)
    after_stalled = rss(pid)
    print(f"{'t (s)':>6} {'RSS (MiB)':>10} {'verified':>9}")
    while time.monotonic() - start < args.seconds:
        samples.append({"t": round(time.monotonic() - start, 1), "rss": rss(pid),
                        "verified": counts["verified"]})
        print(f"{samples[-1]['t']:6.0f} {samples[-1]['rss'] / 2**20:10.1f} "
              f"{counts['verified']:9d}", flush=True)
        await asyncio.sleep(1)
    stop.set()
    await check
    for writer in conns:
        writer.close()
    await asyncio.sleep(2)
    return {
        "rss_before": base, "rss_peak": max(s["rss"] for s in samples),
        "rss_after_close": rss(pid), "idle_connections": idle_open,
        "bytes_per_idle_connection": (after_idle - base) // max(idle_open, 1),
        "stalled_writers": stalled_open, "rss_after_stalled": after_stalled,
        **counts, "samples": samples,
    }


def wait_listening(target: subprocess.Popen[bytes], port: int) -> None:
    """Ready is when the export accepts a connection (not when some file appeared)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if target.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the target did not start") from None
            time.sleep(0.1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--idle", type=int, default=1000)
    p.add_argument("--stalled", type=int, default=60)
    p.add_argument("--port", type=int, default=PORT)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="pbsoak") as tmp:
        config = Path(tmp) / "soak.json"
        config.write_text(json.dumps({"subsystems": [
            {"subsystem": "bdev", "config": [{"method": "bdev_malloc_create", "params": {
                "name": EXPORT, "num_blocks": SIZE // 4096, "block_size": 4096}}]},
            {"subsystem": "nbd", "config": [{"method": "nbd_start_disk", "params": {
                "bdev_name": EXPORT, "nbd_device": f"nbd://127.0.0.1:{args.port}/{EXPORT}"}}]},
        ]}))
        # Limits raised so that every idle connection stays for the whole run and is
        # measured (the defaults would refuse them past 256 and close them after 10 s).
        target = subprocess.Popen([sys.executable, "-m", "pybdev", "-r", f"{tmp}/s.sock",
                                   "--json", str(config), "--log-level", "ERROR",
                                   "--nbd-max-connections", str(args.idle + args.stalled + 8),
                                   "--nbd-handshake-timeout", str(args.seconds + 60)],
                                  cwd=ROOT)
        try:
            wait_listening(target, args.port)
            result = asyncio.run(soak(target.pid, args))
        finally:
            target.send_signal(signal.SIGTERM)
            target.wait(30)
    summary = {k: v for k, v in result.items() if k != "samples"}
    for key, value in summary.items():
        shown = f"{value / 2**20:.1f} MiB" if key.startswith("rss") else value
        print(f"{key:>26}: {shown}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 1 if result["mismatches"] or result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
