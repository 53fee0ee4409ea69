"""malloc through the Python API: data, zeros, naming and validation (SPDK's module/bdev/malloc)."""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pybdev.bdev.core import BdevLayer
from pybdev.bdev.malloc import MallocModule
from pybdev.errors import OperationError
from tests.conftest import Target

from .conftest import complete, module, read


async def test_data_round_trip_zero_fill_unmap_and_write_zeroes(layer: BdevLayer) -> None:
    b = module(layer, MallocModule).create(block_size=4096, num_blocks=64)
    assert b.name == "Malloc0"
    desc = layer.open("Malloc0", write=True)
    assert await read(desc, 0, 64 * 4096) == bytes(64 * 4096)  # zero-filled
    pattern = bytes((i * 7) & 0xFF for i in range(4096 * 8))
    await desc.write_async(4096 * 4, pattern)
    assert await read(desc, 4096 * 4, len(pattern)) == pattern
    await desc.unmap_async(4096 * 5, 4096)
    await desc.write_zeroes_async(4096 * 8, 4096 * 2)
    got = await read(desc, 4096 * 4, len(pattern))
    assert got[:4096] == pattern[:4096]
    assert got[4096:8192] == bytes(4096)
    assert got[8192:4096 * 4] == pattern[8192:4096 * 4]
    assert got[4096 * 4:4096 * 6] == bytes(8192)
    assert got[4096 * 6:] == pattern[4096 * 6:]
    assert complete(lambda cb: desc.flush(0, 4096, cb)) == (0, None)
    assert complete(desc.reset) == (0, None)
    desc.close()


async def test_auto_names_count_only_auto_named_creates(layer: BdevLayer) -> None:
    m = module(layer, MallocModule)
    m.create(name="Malloc1", block_size=512, num_blocks=8)
    assert m.create(block_size=512, num_blocks=8).name == "Malloc0"
    with pytest.raises(OperationError) as e:
        m.create(block_size=512, num_blocks=8)  # Malloc1 exists: -17, the counter advances
    assert e.value.errno == errno.EEXIST
    assert m.create(block_size=512, num_blocks=8).name == "Malloc2"


@pytest.mark.parametrize(("kwargs", "code"), [
    ({"num_blocks": 0}, errno.EINVAL),
    ({"block_size": 520}, errno.EINVAL),
    ({"physical_block_size": 1000}, errno.EINVAL),
    ({"numa_id": 4096}, errno.EINVAL),
    ({"md_size": 7}, errno.EINVAL),
    ({"dif_type": 1}, errno.EINVAL),  # PI needs metadata
    ({"dif_type": 4, "md_size": 8}, errno.EINVAL),
    ({"dif_type": 1, "md_size": 8, "dif_pi_format": 1}, errno.EINVAL),  # 16-byte PI
    ({"dif_type": 1, "md_size": 16, "dif_pi_format": 2}, errno.EINVAL),  # 4 KiB data only
    ({"dif_type": 1, "md_size": 8, "dif_pi_format": 3}, errno.EINVAL),
])
async def test_validation(layer: BdevLayer, kwargs: dict[str, int], code: int) -> None:
    args = {"name": "M", "block_size": 512, "num_blocks": 8, **kwargs}
    with pytest.raises(OperationError) as e:
        module(layer, MallocModule).create(**args)
    assert e.value.errno == code
    assert list(layer) == []


GIB = 1 << 30
MIB = 1 << 20


def rss(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * mmap.PAGESIZE


async def test_large_bdev_is_lazy_gives_pages_back_and_frees_on_delete(
        layer: BdevLayer) -> None:
    before = rss()
    b = module(layer, MallocModule).create(name="Big", block_size=512, num_blocks=GIB // 128)
    assert b.size == 4 * GIB
    assert rss() - before < 64 * MIB  # nothing is zero-filled up front
    desc = layer.open("Big", write=True)
    chunk = b"\x5a" * (4 * MIB)
    for i in range(64):
        await desc.write_async(GIB + i * len(chunk), chunk)
    assert rss() - before > 200 * MIB
    assert await desc.read_async(GIB + 255 * MIB, 4096) == b"\x5a" * 4096
    # Unmap and write-zeroes hand whole pages back; the data reads as zeros.
    touched = rss()
    await desc.unmap_async(GIB, 64 * MIB)
    await desc.write_zeroes_async(GIB + 64 * MIB + 512, 64 * MIB)
    assert touched - rss() > 100 * MIB
    assert await desc.read_async(GIB + 64 * MIB, 4096) == b"\x5a" * 512 + bytes(3584)
    assert await desc.read_async(GIB + 128 * MIB, 4096) == bytes(512) + b"\x5a" * 3584
    desc.close()
    await layer.unregister(b)
    assert rss() - before < 64 * MIB


def _vm_flags(memory: mmap.mmap) -> list[str]:
    """The VmFlags of the mapping holding ``memory``, from /proc/self/smaps."""
    address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(maxsplit=1)[0]
        if "-" in head and not head.endswith(":"):
            start, end = (int(x, 16) for x in head.split("-"))
            inside = start <= address < end
        elif inside and head == "VmFlags:":
            return line.split()[1:]
    raise AssertionError("mapping not found in /proc/self/smaps")


THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@pytest.mark.skipif(not THP.exists() or "[never]" in THP.read_text(),
                    reason="the kernel has transparent huge pages off (or none)")
async def test_large_bdevs_ask_for_huge_pages_small_ones_do_not(layer: BdevLayer) -> None:
    mod = module(layer, MallocModule)
    big = mod.create(name="Big", block_size=512, num_blocks=64 * MIB // 512)
    small = mod.create(name="Small", block_size=512, num_blocks=8)
    assert "hg" in _vm_flags(big.memory)  # MADV_HUGEPAGE
    assert "hg" not in _vm_flags(small.memory)
    desc = layer.open("Big", write=True)
    await desc.write_async(3 * MIB, b"\x5a" * 4096)
    assert await desc.read_async(3 * MIB, 4096) == b"\x5a" * 4096
    desc.close()


async def test_a_read_view_outlives_the_deleted_bdev(layer: BdevLayer) -> None:
    """An export may still hold a read view (queued for sending) when the bdev goes."""
    module(layer, MallocModule).create(name="M", block_size=512, num_blocks=8)
    desc = layer.open("M", write=True)
    await desc.write_async(0, b"\x42" * 512)
    held: list[memoryview] = []
    desc.read(0, 512, lambda _s, data: held.append(data))
    desc.close()
    await layer.unregister_by_name("M", "malloc")
    assert bytes(held[0]) == b"\x42" * 512


def test_creating_a_4_gib_bdev_does_not_stall_the_target(
        start_target: Callable[..., Target], tmp_path: Path) -> None:
    """/health and another RPC connection answer while a 4 GiB bdev is created."""
    health = tmp_path / "h.sock"
    t = start_target("--http", f"unix:{health}")
    before = rss(t.proc.pid)
    created: list[Any] = []
    creator = threading.Thread(target=lambda: created.append(t.rpc(
        "bdev_malloc_create", {"name": "Big", "num_blocks": GIB // 1024, "block_size": 4096})))
    with t.client(timeout=5) as probe:
        creator.start()
        answers = 0
        while creator.is_alive() or answers < 3:
            assert probe.call("spdk_get_version")["version"]  # at most 5 s each
            # What an orchestrator's liveness probe asks.
            res = subprocess.run(["curl", "-sf", "-m", "5", "--unix-socket", str(health),
                                  "http://localhost/health"], capture_output=True, text=True,
                                 timeout=30)
            assert res.returncode == 0 and json.loads(res.stdout)["status"] == "ok"
            answers += 1
        creator.join()
    assert created == ["Big"]
    assert rss(t.proc.pid) - before < 256 * MIB  # a 4 GiB bdev costs nothing until written
    assert t.rpc("bdev_malloc_delete", {"name": "Big"}) is True
    assert rss(t.proc.pid) - before < 256 * MIB


async def test_zero_copy_write_lands_in_place_and_counts_once(layer: BdevLayer) -> None:
    """SPDK's zcopy start/commit: the payload is received into the bdev's own memory."""
    b = module(layer, MallocModule).create(block_size=512, num_blocks=64)
    desc = layer.open(b.name, write=True)
    buf = desc.zcopy_buffer(1024, 2048)
    assert buf is not None and len(buf) == 2048
    buf[:] = b"\xa5" * 2048
    assert complete(lambda cb: desc.zcopy_commit(1024, 2048, cb)) == (0, None)
    assert await read(desc, 512, 3072) == bytes(512) + b"\xa5" * 2048 + bytes(512)
    st = b.stat.to_json(b.name)
    assert (st["num_write_ops"], st["bytes_written"]) == (1, 2048)
    desc.close()


async def test_zero_copy_write_refused_where_the_write_must_be_seen(layer: BdevLayer) -> None:
    """None sends the caller to the plain write: bad ranges, read-only descriptors, PI
    checked on write, hooks (histogram, QoS) and modules without in-place memory."""
    from pybdev.bdev.histogram import Histogram
    from pybdev.bdev.passthru import PassthruModule

    m = module(layer, MallocModule)
    b = m.create(name="M0", block_size=512, num_blocks=64)
    desc = layer.open("M0", write=True)
    for offset, length in [(1, 512), (0, 100), (0, 0), (63 * 512, 1024), (-512, 512)]:
        assert desc.zcopy_buffer(offset, length) is None
    ro = layer.open("M0", write=False)
    assert ro.zcopy_buffer(0, 512) is None
    assert complete(lambda cb: ro.zcopy_commit(0, 512, cb))[0] == -errno.EBADF
    ro.close()
    b.histogram = Histogram()
    b.update_hooks()
    assert desc.zcopy_buffer(0, 512) is None
    b.histogram = None
    b.update_hooks()
    assert desc.zcopy_buffer(0, 512) is not None
    desc.close()
    m.create(name="Dif", block_size=512, num_blocks=64, md_size=8, md_interleave=True,
             dif_type=1)
    dif = layer.open("Dif", write=True)
    assert dif.zcopy_buffer(0, 520) is None
    dif.close()
    module(layer, PassthruModule).create(base_bdev_name="M0", name="P0")
    await layer.wait_for_examine()
    p = layer.open("P0", write=True)
    assert p.zcopy_buffer(0, 512) is None
    p.close()
