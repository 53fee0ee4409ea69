"""scripts/iostat.py against a running target: SPDK's iostat.py options and columns."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, Target
from tests.nbd.conftest import need, run, unix_uri

IOSTAT = ROOT / "scripts/iostat.py"


def iostat(t: Target, *args: str, python: str = sys.executable) -> list[list[str]]:
    res = subprocess.run([python, str(IOSTAT), "-s", str(t.sock), *args],
                         capture_output=True, text=True, timeout=60, cwd="/", env={})
    assert res.returncode == 0, res.stderr
    return [line.split() for line in res.stdout.splitlines() if line.strip()]


@need("qemu-io")
def test_rates_and_extended_columns(target: Target, tmp_path: Path) -> None:
    t = target
    t.rpc("bdev_malloc_create", {"name": "M0", "num_blocks": 8192, "block_size": 512})
    t.rpc("bdev_malloc_create", {"name": "M1", "num_blocks": 64, "block_size": 512})
    t.rpc("bdev_set_qd_sampling_period", {"name": "M0", "period": 1000})
    uri = t.rpc("nbd_start_disk", {"bdev_name": "M0",
                                   "nbd_device": unix_uri("M0", tmp_path / "n.sock")})
    run(["qemu-io", "-f", "raw", "-c", "write 0 1M", "-c", "read 0 512k", uri])
    stat = t.rpc("bdev_get_iostat", {"name": "M0"})["bdevs"][0]

    # One report: the totals, in KiB, for the bdevs asked for; rates are averages over the
    # target's tick count (as SPDK's, whose ticks count from boot).
    system = Path("/usr/bin/python3")  # standard library only, like scripts/rpc.py
    lines = iostat(t, "-d", "-b", "M0",
                   python=str(system) if system.exists() else sys.executable)
    assert lines[0] == ["Device", "tps", "KB_read/s", "KB_wrtn/s", "KB_dscd/s", "KB_read",
                        "KB_wrtn", "KB_dscd"]
    (row,) = lines[1:]
    assert row[0] == "M0" and float(row[1]) >= 0
    assert float(row[5]) == stat["bytes_read"] / 1024
    assert float(row[6]) == stat["bytes_written"] / 1024

    # Extended: M0 samples its queue depth, M1 does not.
    lines = iostat(t, "-d", "-x", "-m")
    assert lines[0][-7:] == ["qu-sz", "aqu-sz", "wareq-sz", "rareq-sz", "w_await(us)",
                             "r_await(us)", "util"]
    rows = {r[0]: r for r in lines[1:]}
    assert float(rows["M0"][6]) == stat["bytes_written"] / 1024 / 1024
    w_await = stat["write_latency_ticks"] / stat["num_write_ops"] / 1000
    assert abs(float(rows["M0"][12]) - w_await) < 0.01
    assert rows["M1"][8:] == ["N/A"] * 7

    # -i 1 -t 2: two reports, the second of the interval (nothing moved: zero rates).
    lines = iostat(t, "-d", "-i", "1", "-t", "2", "-b", "M0")
    reports = [i for i, line in enumerate(lines) if line[0] == "Device"]
    assert len(reports) == 2
    assert float(lines[reports[1] + 1][1]) == 0.0
    t.rpc("nbd_stop_disk", {"nbd_device": uri})


def test_usage_errors(target: Target) -> None:
    for args in (["-i", "1"], ["-k", "-m"], ["-i", "0", "-t", "1"]):
        res = subprocess.run([sys.executable, str(IOSTAT), "-s", str(target.sock), *args],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 2, (args, res)
    res = subprocess.run([sys.executable, str(IOSTAT), "-s", "/nonexistent/x.sock"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "Error while connecting" in res.stderr
