"""Latency histograms (pybdev/bdev/histogram.py) in SPDK's layout, and their RPCs on a target.

The decoding here is written from SPDK's ``scripts/histogram.py`` and
``include/spdk/histogram_data.h`` (SPDK's own client prints the RPC's answer but does not
decode it), independently of pybdev's code: base64 of little-endian u64 counts, ranges of
``2**granularity`` buckets from ``min_range`` to ``max_range``.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pybdev.bdev.core import BdevLayer
from pybdev.bdev.histogram import Histogram
from pybdev.bdev.malloc import MallocModule
from tests.conftest import Target
from tests.nbd.conftest import need, run, unix_uri

from .conftest import module, names


def decode(answer: dict[str, Any]) -> list[tuple[int, int, int]]:
    """``(start, end, count)`` of each non-empty bucket, in ticks, as histogram.h defines."""
    raw = base64.b64decode(answer["histogram"])
    g, lo, hi = answer["granularity"], answer["min_range"], answer["max_range"]
    assert len(raw) == ((hi - lo + 1) << g) * 8
    out = []
    for r in range(lo, hi + 1):
        for j in range(1 << g):
            at = (((r - lo) << g) + j) * 8
            count = int.from_bytes(raw[at:at + 8], "little")
            if r == 0:
                start, end = j, j + 1
            else:
                start = (1 << (r + g - 1)) + (j << (r - 1))
                end = start + (1 << (r - 1))
            if count:
                out.append((start, end, count))
    return out


def histogram_py_total(answer: dict[str, Any]) -> int:
    """The sum SPDK's scripts/histogram.py prints percentages of (its ranges and indexing)."""
    raw = base64.b64decode(answer["histogram"])
    g = answer["granularity"]
    total = 1  # histogram.py starts from 1 to avoid a division by zero
    for i in range(0, answer["max_range"] - answer["min_range"]):
        for j in range(0, (1 << g)):
            index = ((i << g) + j) * 8
            total += int.from_bytes(raw[index:index + 8], "little")
    return total


def answer(h: Histogram) -> dict[str, Any]:
    return {"histogram": h.encoded(), "granularity": h.granularity, "min_range": h.min_range,
            "max_range": h.max_range, "tsc_rate": 10**9}


@pytest.mark.parametrize("granularity", [0, 3, 7, 12])
def test_every_value_lands_in_the_bucket_that_covers_it(granularity: int) -> None:
    rng = random.Random(granularity)
    values = [0, 1, 127, 128, 255, 256, 257, 511, 512, 2**40 + 12345, 2**64 - 1]
    values += [rng.randrange(1 << rng.randrange(1, 64)) for _ in range(300)]
    for v in values:
        h = Histogram(granularity)
        h.tally(v)
        ((start, end, count),) = decode(answer(h))
        assert count == 1 and start <= v < end, (v, start, end)


def test_values_outside_the_ranges_go_to_the_first_and_last_bucket() -> None:
    h = Histogram(7, min_nsec=1000, max_nsec=120_000_000_000)  # the RPC's defaults
    assert (h.min_range, h.max_range) == (3, 30)  # 999 has 10 bits, 12e10 - 1 has 37
    h.tally(5)
    h.tally(10**12)
    h.tally(5000)
    buckets = decode(answer(h))
    assert buckets[0][:2] == (1 << 9, (1 << 9) + 4) and buckets[0][2] == 1  # below: first
    assert buckets[-1][2] == 1 and buckets[-1][1] == 1 << 37  # above: last
    assert buckets[1][0] <= 5000 < buckets[1][1]


def test_borders_count() -> None:
    h = Histogram(7)
    for v in (10, 20, 2000, 5000, 900_000):
        h.tally(v)
    # Borders (ticks) as spdk_histogram_get_borders_count: counts at or below each, then all.
    assert h.borders_count([1000, 10_000, 1_000_000]) == [2, 4, 5, 5]
    assert h.borders_count([1]) == [0, 5]


async def test_layer_tallies_only_while_enabled(layer: BdevLayer) -> None:
    bdev = module(layer, MallocModule).create(name="H0", block_size=512, num_blocks=64)
    desc = layer.open("H0", write=True)
    await desc.read_async(0, 512)  # not counted: no histogram yet
    bdev.histogram = Histogram(io_type="write")
    bdev.update_hooks()
    await desc.read_async(0, 512)
    await desc.write_async(0, bytes(512))
    await desc.write_async(512, bytes(1024))
    assert sum(c for _, _, c in decode(answer(bdev.histogram))) == 2
    bdev.histogram = None
    bdev.update_hooks()
    assert not bdev._hooked
    desc.close()


async def test_data_with_separate_metadata_is_tallied(layer: BdevLayer) -> None:
    bdev = module(layer, MallocModule).create(name="H0", block_size=512, num_blocks=64,
                                              md_size=8)
    desc = layer.open("H0", write=True)
    bdev.histogram = Histogram(io_type="write")
    bdev.update_hooks()
    await desc.write_md_async(0, bytes(1024), bytes(16))
    assert await desc.read_md_async(0, 512) == (bytes(512), bytes(8))  # a read: not tallied
    assert sum(c for _, _, c in decode(answer(bdev.histogram))) == 1
    desc.close()


# -- on a target -----------------------------------------------------------------------------

@pytest.fixture
def t(shared_target: Target) -> Iterator[Target]:
    shared_target.rpc("bdev_malloc_create", {"name": "H0", "num_blocks": 2048,
                                             "block_size": 512})
    yield shared_target
    shared_target.rpc("bdev_malloc_delete", {"name": "H0"})
    assert names(shared_target) == []


@need("qemu-io")
def test_histogram_of_nbd_reads(t: Target, short_dir: Path) -> None:
    assert t.rpc_error("bdev_get_histogram", {"name": "H0"}) == {
        "code": -32603, "message": "Bad address"}  # SPDK's answer while disabled
    t.spdk("bdev_enable_histogram", "H0", "--histogram", "--opc", "read")
    uri = t.rpc("nbd_start_disk", {"bdev_name": "H0",
                                   "nbd_device": unix_uri("H0", short_dir / "n.sock")})
    try:
        before = t.rpc("bdev_get_iostat", {"name": "H0"})["bdevs"][0]["num_read_ops"]
        run(["qemu-io", "-f", "raw", "-c", "read 0 64k", "-c", "write 0 4k",
             "-c", "read 4k 4k", uri])
        reads = t.rpc("bdev_get_iostat", {"name": "H0"})["bdevs"][0]["num_read_ops"] - before
    finally:
        t.rpc("nbd_stop_disk", {"nbd_device": uri})
    got = json.loads(t.spdk("bdev_get_histogram", "H0").stdout)
    assert got["tsc_rate"] == 10**9 and got["granularity"] == 7
    assert (got["min_range"], got["max_range"]) == (3, 30)
    buckets = decode(got)
    assert reads >= 2 and sum(c for _, _, c in buckets) == reads  # reads only (opc)
    assert histogram_py_total(got) == reads + 1  # what histogram.py divides by
    borders = t.rpc("bdev_get_histogram_borders", {"name": "H0", "borders": [10**8]})
    assert borders == {"borders_count": [reads, reads]}


def test_errors_and_disable(t: Target) -> None:
    assert t.rpc_error("bdev_enable_histogram", {"name": "nope", "enable": True}) == {
        "code": -19, "message": "No such device"}
    assert t.rpc_error("bdev_enable_histogram", {"name": "H0", "enable": True,
                                                 "opc": "bogus"}) == {
        "code": -32603, "message": "Invalid Io type"}
    err = t.rpc_error("bdev_enable_histogram", {"name": "H0"})
    assert err["code"] == -32603 and err["message"].startswith("spdk_json_decode_object")
    err = t.rpc_error("bdev_enable_histogram", {"name": "H0", "enable": True,
                                                "min_nsec": 10, "max_nsec": 10})
    assert err["code"] == -22
    t.rpc("bdev_enable_histogram", {"name": "H0", "enable": True})
    assert t.rpc("bdev_get_histogram", {"name": "H0"})["granularity"] == 7
    t.rpc("bdev_enable_histogram", {"name": "H0", "enable": False})
    assert t.rpc_error("bdev_get_histogram", {"name": "H0"})["code"] == -32603


def test_saved_and_replayed(start_target: Callable[..., Target], tmp_path: Path) -> None:
    first = start_target()
    first.rpc("bdev_malloc_create", {"name": "H0", "num_blocks": 64, "block_size": 512})
    first.rpc("bdev_enable_histogram", {"name": "H0", "enable": True, "opc": "write",
                                        "granularity": 5})
    saved = first.cli("save_config").stdout
    bdev = next(s for s in json.loads(saved)["subsystems"] if s["subsystem"] == "bdev")
    entry = next(c for c in bdev["config"] if c["method"] == "bdev_enable_histogram")
    assert entry["params"] == {"name": "H0", "enable": True, "opc": "write", "granularity": 5,
                               "min_nsec": 1000, "max_nsec": 120_000_000_000}
    config = tmp_path / "saved.json"
    config.write_text(saved)
    second = start_target("--json", str(config))
    assert second.rpc("bdev_get_histogram", {"name": "H0"})["granularity"] == 5
    assert second.cli("save_config").stdout == saved
