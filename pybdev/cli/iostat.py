"""``scripts/iostat.py`` (``pybdev-iostat``): per-bdev I/O rates from ``bdev_get_iostat``.

The options and columns of SPDK's ``scripts/iostat.py``: without ``-i``/``-t`` one report
of the averages since the target started; with ``-i N -t T`` a report every N seconds for
T seconds, each from the difference to the one before. ``-x`` adds the extended columns
(queue size from queue-depth sampling, request sizes, average latencies, utilisation),
``-m`` shows MiB instead of KiB, ``-c``/``-d`` only the CPU or only the bdevs. Works with
pybdev and with SPDK's own target; standard library only, like ``scripts/rpc.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from pybdev.rpc.client import DEFAULT_ADDR, DEFAULT_PORT, JsonRpcException, RpcClient

KB_HEAD = ["Device", "tps", "KB_read/s", "KB_wrtn/s", "KB_dscd/s", "KB_read", "KB_wrtn",
           "KB_dscd"]
MB_HEAD = ["Device", "tps", "MB_read/s", "MB_wrtn/s", "MB_dscd/s", "MB_read", "MB_wrtn",
           "MB_dscd"]
EXT_HEAD = ["qu-sz", "aqu-sz", "wareq-sz", "rareq-sz", "w_await(us)", "r_await(us)", "util"]
CPU_HEAD = ["cpu_stat:", "user_stat", "nice_stat", "system_stat", "iowait_stat", "steal_stat",
            "idle_stat"]
COUNTERS = ("bytes_read", "bytes_written", "bytes_unmapped", "num_read_ops", "num_write_ops",
            "num_unmap_ops", "read_latency_ticks", "write_latency_ticks", "io_time",
            "weighted_io_time")
Sample = dict[str, dict[str, Any]]


def table(rows: list[list[str]], head: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines) + "\n"


def bdev_rows(now: Sample, before: Sample | None, seconds: float, tick_rate: int,
              mb: bool, extended: bool) -> list[list[str]]:
    """One row per bdev: rates over ``seconds`` since ``before`` (or since start)."""
    unit = 1024 * 1024 if mb else 1024
    rows = []
    for name, cur in now.items():
        old = (before or {}).get(name, {})
        d = {k: cur.get(k, 0) - old.get(k, 0) for k in COUNTERS}
        ops = d["num_read_ops"] + d["num_write_ops"] + d["num_unmap_ops"]
        row = [name, f"{ops / seconds:.2f}",
               f"{d['bytes_read'] / unit / seconds:.2f}",
               f"{d['bytes_written'] / unit / seconds:.2f}",
               f"{d['bytes_unmapped'] / unit / seconds:.2f}",
               f"{d['bytes_read'] / unit:.2f}", f"{d['bytes_written'] / unit:.2f}",
               f"{d['bytes_unmapped'] / unit:.2f}"]
        if extended:
            row += extended_columns(cur, d, seconds, tick_rate)
        rows.append(row)
    return rows


def extended_columns(cur: dict[str, Any], d: dict[str, int], seconds: float,
                     tick_rate: int) -> list[str]:
    period = cur.get("queue_depth_polling_period", 0)
    if not period:
        return ["N/A"] * len(EXT_HEAD)
    busy = d["io_time"] / period  # samples that found requests in flight
    aqu = d["weighted_io_time"] / period / busy if busy else 0.0
    reads, writes = d["num_read_ops"], d["num_write_ops"]
    # Request sizes in 512-byte sectors, latencies in microseconds, as iostat(1) shows them.
    wareq = d["bytes_written"] / 512 / writes if writes else 0.0
    rareq = d["bytes_read"] / 512 / reads if reads else 0.0
    w_await = d["write_latency_ticks"] * 1e6 / tick_rate / writes if writes else 0.0
    r_await = d["read_latency_ticks"] * 1e6 / tick_rate / reads if reads else 0.0
    util = busy / (seconds * 1e6 / period)
    return [f"{v:.2f}" for v in (cur.get("queue_depth", 0), aqu, wareq, rareq, w_await,
                                 r_await, util)]


def cpu_times() -> list[int]:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu "):
                return [int(v) for v in line.split()[1:]]
    return []


def cpu_row(now: list[int], before: list[int] | None) -> list[str]:
    d = [a - b for a, b in zip(now, before or [0] * len(now), strict=True)]
    total = sum(d[:8]) or 1
    # user, nice, system (+irq, softirq), iowait, steal, idle
    parts = [d[0], d[1], d[2] + d[5] + d[6], d[4], d[7], d[3]]
    return ["", *(f"{p / total:.2%}" for p in parts)]


def positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} should be a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Per-bdev I/O statistics of a running target")
    p.add_argument("-c", "--cpu-status", dest="cpu_stat", action="store_true",
                   help="only display the CPU status")
    p.add_argument("-d", "--bdev-status", dest="bdev_stat", action="store_true",
                   help="only display the bdev statistics")
    p.add_argument("-k", "--kb-display", action="store_true", help="sizes in KiB (default)")
    p.add_argument("-m", "--mb-display", action="store_true", help="sizes in MiB")
    p.add_argument("-u", "--use-uptime", action="store_true",
                   help="time the intervals with this host's clock, not the target's ticks")
    p.add_argument("-i", "--interval", type=positive, default=0,
                   help="seconds between reports (with -t)")
    p.add_argument("-t", "--time", dest="time_in_second", type=positive, default=0,
                   help="seconds to report for (with -i)")
    p.add_argument("-s", "--server", dest="server_addr", default=DEFAULT_ADDR,
                   help="RPC socket path or IP address (default %(default)s)")
    p.add_argument("-p", "--port", type=int, default=DEFAULT_PORT,
                   help="RPC port (with an IP address)")
    p.add_argument("-b", "--names", type=lambda s: s.split(","),
                   help="comma-separated bdev names (default: all)")
    p.add_argument("-o", "--timeout", type=float, default=60.0,
                   help="seconds to wait for an answer")
    p.add_argument("-x", "--extended", dest="extended_display", action="store_true",
                   help="extended statistics (queue size needs bdev_set_qd_sampling_period)")
    return p


def report(client: RpcClient, args: argparse.Namespace, before: Sample | None,
           before_time: float, before_cpu: list[int] | None) -> tuple[Sample, float, list[int]]:
    cpu: list[int] = []
    out = []
    if not args.bdev_stat or args.cpu_stat:
        cpu = cpu_times()
        out.append(table([cpu_row(cpu, before_cpu)], CPU_HEAD))
    now: Sample = {}
    stamp = before_time
    if not args.cpu_stat or args.bdev_stat:
        params = {"names": args.names} if args.names else None
        stat = client.call("bdev_get_iostat", params)
        tick_rate = int(stat["tick_rate"])
        stamp = time.monotonic() if args.use_uptime else stat["ticks"] / tick_rate
        now = {b["name"]: b for b in stat["bdevs"]}
        if before is None:
            # Averages since the target started: its ticks count from its start.
            seconds = (time.clock_gettime(time.CLOCK_BOOTTIME) if args.use_uptime
                       else stamp) or 1.0
        else:
            seconds = max(stamp - before_time, 1e-9)
        rows = bdev_rows(now, before, seconds, tick_rate, args.mb_display,
                         args.extended_display)
        head = (MB_HEAD if args.mb_display else KB_HEAD) + (
            EXT_HEAD if args.extended_display else [])
        if rows:
            out.append(table(rows, head))
    print("\n".join(out), flush=True)
    return now, stamp, cpu


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.interval == 0) != (args.time_in_second == 0):
        parser.error("-i and -t go together")
    if args.kb_display and args.mb_display:
        parser.error("-k and -m exclude each other")
    try:
        with RpcClient(args.server_addr, args.port, args.timeout) as client:
            before: Sample | None = None
            before_time = 0.0
            before_cpu: list[int] | None = None
            elapsed = 0
            while True:
                before, before_time, before_cpu = report(client, args, before, before_time,
                                                         before_cpu)
                if not args.interval:
                    return 0
                time.sleep(args.interval)
                elapsed += args.interval
                if elapsed >= args.time_in_second:  # as SPDK's: T / N reports
                    return 0
    except JsonRpcException as e:
        print(e.message, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def script_main() -> None:  # entry point of scripts/iostat.py and pybdev-iostat
    sys.exit(main())
