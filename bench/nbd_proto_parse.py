"""Requests per second through the sans-IO NBD request parser (pybdev.proto.nbd).

Batches of 4 KiB READs and WRITEs, as a server sees them at queue depth 32, go through:

* ``parse``: :func:`parse_requests` alone;
* ``parse+check``: plus :meth:`RequestValidator.check` for every request;
* ``server loop``: what a lean ``asyncio.Protocol`` server does per ``data_received``:
  append the chunk to a bytearray, parse, check, copy write payloads into a RAM disk,
  encode replies (simple, or structured with ``--structured``) with read data as
  memoryview slices, compact the buffer.  The stream arrives in 64 KiB chunks, so
  requests straddle chunk boundaries as they do on a socket.

The figure to compare with is the ~5 µs of server CPU per 4 KiB I/O of the fastest
minimal Python servers (docs/decisions/nbd-server-design.md): the protocol layer should be
a small fraction of it.  Best of ``--repeat`` rounds is reported (the machine is shared).

    python bench/nbd_proto_parse.py [--depth 32] [--seconds 0.5] [--repeat 5] [--structured]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from pybdev.proto import nbd

BLOCK = 4096
DISK_SIZE = 64 * 1024 * 1024
TX_FLAGS = (
    nbd.NBD_FLAG_HAS_FLAGS
    | nbd.NBD_FLAG_SEND_FLUSH
    | nbd.NBD_FLAG_SEND_FUA
    | nbd.NBD_FLAG_SEND_TRIM
    | nbd.NBD_FLAG_SEND_WRITE_ZEROES
)


def make_stream(depth: int, write_ratio: float, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    payload = bytes(range(256)) * (BLOCK // 256)
    out = bytearray()
    for cookie in range(depth):
        offset = rng.randrange(DISK_SIZE // BLOCK) * BLOCK
        if rng.random() < write_ratio:
            out += nbd.encode_request(nbd.NBD_CMD_WRITE, cookie, offset, BLOCK) + payload
        else:
            out += nbd.encode_request(nbd.NBD_CMD_READ, cookie, offset, BLOCK)
    return bytes(out)


def rate(fn: Callable[[], int], seconds: float, repeat: int) -> float:
    """Best requests/s of ``repeat`` rounds of ``seconds`` each; ``fn`` returns requests done."""
    best = 0.0
    for _ in range(repeat):
        done = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            done += fn()
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, done / (now - start))
    return best


def bench_parse(stream: bytes) -> Callable[[], int]:
    buf = bytearray(stream)
    parse = nbd.parse_requests

    def run() -> int:
        total = 0
        for _ in range(20):
            requests, _, _ = parse(buf)
            total += len(requests)
            del requests
        return total

    return run


def bench_parse_check(stream: bytes) -> Callable[[], int]:
    buf = bytearray(stream)
    parse = nbd.parse_requests
    check = nbd.RequestValidator(DISK_SIZE, TX_FLAGS, min_block_size=512).check

    def run() -> int:
        total = 0
        for _ in range(20):
            requests, _, _ = parse(buf)
            for typ, flags, _cookie, offset, length, _payload in requests:
                if check(typ, flags, offset, length):
                    raise AssertionError("request rejected")
            total += len(requests)
            del requests
        return total

    return run


def bench_server_loop(stream: bytes, structured: bool) -> Callable[[], int]:
    chunk_size = 64 * 1024
    pieces = [stream[i : i + chunk_size] for i in range(0, len(stream), chunk_size)]
    disk = bytearray(DISK_SIZE)
    disk_view = memoryview(disk)
    parse = nbd.parse_requests
    check = nbd.RequestValidator(
        DISK_SIZE, TX_FLAGS, min_block_size=512, structured_replies=structured
    ).check
    simple = nbd.encode_simple_reply
    read_header = nbd.encode_read_reply_header
    error_reply = nbd.encode_error_reply
    read_cmd, write_cmd = nbd.NBD_CMD_READ, nbd.NBD_CMD_WRITE
    buf = bytearray()
    sink: list[object] = []

    def data_received(data: bytes) -> int:
        nonlocal buf
        buf += data
        requests, pos, _ = parse(buf)
        out: list[bytes | memoryview] = []
        for typ, flags, cookie, offset, length, payload in requests:
            err = check(typ, flags, offset, length)
            if err:
                out.append(error_reply(cookie, err, structured))
            elif typ == read_cmd:
                out.append(read_header(cookie, offset, length, structured))
                out.append(disk_view[offset : offset + length])
            elif typ == write_cmd:
                disk[offset : offset + length] = payload  # type: ignore[assignment]
                out.append(simple(cookie))
        count = len(requests)
        del requests  # release the views into buf before compacting it
        payload = None
        del buf[:pos]
        sink.append(out)  # stands for transport.writelines(out)
        return count

    def run() -> int:
        total = 0
        for _ in range(10):
            for piece in pieces:
                total += data_received(piece)
            sink.clear()
        return total

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=32, help="requests per batch")
    parser.add_argument("--seconds", type=float, default=0.5, help="length of one round")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the best is kept")
    parser.add_argument("--structured", action="store_true", help="structured read replies")
    args = parser.parse_args()

    print(f"4 KiB requests, batches of {args.depth}, best of {args.repeat} x {args.seconds}s")
    print(f"{'workload':<12} {'stage':<14} {'req/s':>12} {'us/req':>8}")
    for name, ratio in (("read", 0.0), ("write", 1.0), ("50/50", 0.5)):
        stream = make_stream(args.depth, ratio)
        stages = (
            ("parse", bench_parse(stream)),
            ("parse+check", bench_parse_check(stream)),
            ("server loop", bench_server_loop(stream, args.structured)),
        )
        for stage, fn in stages:
            per_second = rate(fn, args.seconds, args.repeat)
            print(f"{name:<12} {stage:<14} {per_second:>12,.0f} {1e6 / per_second:>8.2f}")


if __name__ == "__main__":
    main()
