"""The lvstore (pybdev.bdev.lvol.store) on a malloc base and on an aio base.

Every operation, a reload after "restart" (a new store object reading the same bdev), and a
seeded crash loop: a descriptor that drops every write after the N-th, then a reload whose
result the consistency checker must accept, with each acknowledged-and-committed write intact.
"""

from __future__ import annotations

import asyncio
import errno
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from pybdev.bdev.aio import AioModule
from pybdev.bdev.core import BdevLayer, Callback, Descriptor
from pybdev.bdev.lvol.check import check_base, check_store
from pybdev.bdev.lvol.layout import compute_geometry
from pybdev.bdev.lvol.store import Lvol, LvolStore
from pybdev.bdev.malloc import MallocModule
from pybdev.errors import OperationError

MiB = 1 << 20
CS = 1 * MiB  # small clusters keep the tests quick


@pytest.fixture(params=["malloc", "aio"])
async def base(request: pytest.FixtureRequest, layer: BdevLayer,
               tmp_path: Path) -> AsyncIterator[Descriptor]:
    if request.param == "malloc":
        layer.module(MallocModule).create(name="M0", block_size=512, num_blocks=64 * MiB // 512)
        name = "M0"
    else:
        path = tmp_path / "aio.img"
        path.write_bytes(b"")
        with path.open("r+b") as f:
            f.truncate(64 * MiB)
        await layer.module(AioModule).create(name="A0", filename=str(path), block_size=4096)
        name = "A0"
    desc = layer.open(name, write=True)
    yield desc
    desc.close()


def _call(submit: Callable[[Callback], None]) -> Awaitable[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def done(status: int, data: Any) -> None:
        if status:
            fut.set_exception(OperationError(-status))
        else:
            fut.set_result(None if data is None else bytes(data))

    submit(done)
    return fut


async def write(lvol: Lvol, offset: int, data: bytes) -> None:
    await _call(lambda cb: lvol.write(offset, data, cb))


async def read(lvol: Lvol, offset: int, length: int) -> bytes:
    data: bytes = await _call(lambda cb: lvol.read(offset, length, cb))
    return data


async def reload(desc: Descriptor) -> LvolStore:
    store = await LvolStore.load(desc)
    report = check_store(store)
    assert report.ok, report.problems
    return store


def pattern(byte: int, n: int) -> bytes:
    return bytes([byte]) * n


# -- geometry: SPDK's numbers ----------------------------------------------------------
def test_geometry_matches_spdk_arithmetic() -> None:
    # test/lvol's base: 128 MiB malloc, 512 B blocks, 4 MiB clusters -> 31 data clusters.
    geo = compute_geometry(128 * MiB, 512, 4 * MiB)
    assert (geo.total_clusters, geo.data_clusters) == (32, 31)
    # doc/jsonrpc.md's max_growable_size example: 32728 clusters of 4 MiB.
    assert geo.max_growable_size == 32728 * 4 * MiB
    # nvmf_lvs_grow.sh: 200 MiB aio, 4 MiB clusters, ratio 300 -> 49 data clusters.
    assert compute_geometry(200 * MiB, 4096, 4 * MiB, 300).data_clusters == 49
    compute_geometry(128 * MiB, 512, 8192)  # basic.sh: -c 8192 works
    for bad, code in ((8191, errno.EINVAL), (4096, errno.ENOMEM), (1, errno.EINVAL)):
        with pytest.raises(OperationError) as e:
            compute_geometry(128 * MiB, 512, bad)
        assert e.value.errno == code


# -- operations ------------------------------------------------------------------------
async def test_create_load_and_destroy(base: Descriptor) -> None:
    store = await LvolStore.create(base, "lvs0", cluster_size=CS)
    total = store.total_data_clusters
    assert store.free_clusters == total == 64 - store.geometry.md_clusters
    thick = await store.create_lvol("thick", 3 * MiB)
    thin = await store.create_lvol("thin", 10 * MiB, thin=True)
    assert store.free_clusters == total - 3
    assert thick.num_allocated_clusters == 3 and thin.num_allocated_clusters == 0
    with pytest.raises(OperationError) as e:
        await store.create_lvol("thick", MiB)
    assert e.value.errno == errno.EEXIST
    with pytest.raises(OperationError) as e:
        await store.create_lvol("huge", (total + 1) * MiB)
    assert e.value.errno == errno.ENOSPC
    await write(thick, MiB - 4096, pattern(0xAB, 8192))  # across a cluster boundary
    again = await reload(base)
    assert [v.name for v in again.lvols.values()] == ["thick", "thin"]
    assert (again.name, again.uuid, again.free_clusters) == ("lvs0", store.uuid, total - 3)
    assert await read(again.lvols[thick.uuid], MiB - 4096, 8192) == pattern(0xAB, 8192)
    await again.destroy()
    assert not (await check_base(base)).found
    with pytest.raises(OperationError):
        await LvolStore.load(base)


async def test_thin_allocation_and_accounting(base: Descriptor) -> None:
    store = await LvolStore.create(base, "lvs0", cluster_size=CS)
    free = store.free_clusters
    vol = await store.create_lvol("thin", 8 * MiB, thin=True)
    assert await read(vol, 0, 8192) == bytes(8192)
    await write(vol, 0, pattern(1, 4096))
    assert (vol.num_allocated_clusters, store.free_clusters) == (1, free - 1)
    await write(vol, MiB + MiB // 2, pattern(2, MiB))  # 1.5 clusters in: two more
    assert (vol.num_allocated_clusters, store.free_clusters) == (3, free - 3)
    # concurrent first writes to one cluster allocate it once
    await asyncio.gather(*(write(vol, 4 * MiB + i * 4096, pattern(3 + i, 4096)) for i in range(8)))
    assert vol.num_allocated_clusters == 4
    for i in range(8):
        assert await read(vol, 4 * MiB + i * 4096, 4096) == pattern(3 + i, 4096)
    # unmap of a whole cluster gives it back; a partial one does not
    await _call(lambda cb: vol.unmap(0, MiB, cb))
    await _call(lambda cb: vol.unmap(MiB, 4096, cb))
    assert vol.num_allocated_clusters == 3 and store.free_clusters == free - 3
    assert await read(vol, 0, 4096) == bytes(4096)
    again = await reload(base)
    assert again.free_clusters == free - 3
    await store.delete_lvol(vol)
    assert store.free_clusters == free
    assert check_store(store).ok


async def test_enospc_is_reported_not_hung(base: Descriptor) -> None:
    store = await LvolStore.create(base, "lvs0", cluster_size=CS)
    n = store.free_clusters
    a = await store.create_lvol("a", n * MiB, thin=True)
    b = await store.create_lvol("b", n * MiB, thin=True)
    for i in range(n - 1):
        await write(a, i * MiB, pattern(0xA0, 4096))
    await write(b, 0, pattern(0xB0, 4096))
    with pytest.raises(OperationError) as e:
        await asyncio.wait_for(write(b, MiB, pattern(0xB1, 4096)), 5)
    assert e.value.errno == errno.ENOSPC
    assert store.free_clusters == 0
    assert await read(a, 0, 4096) == pattern(0xA0, 4096)
    assert await read(b, MiB, 4096) == bytes(4096)
    assert check_store(store).ok


async def test_snapshot_clone_and_chains(base: Descriptor) -> None:
    store = await LvolStore.create(base, "lvs0", cluster_size=CS)
    vol = await store.create_lvol("vol", 4 * MiB)
    await write(vol, 0, pattern(0xDD, 4 * MiB))
    snap = await store.snapshot(vol, "snap")
    assert snap.read_only and snap.num_allocated_clusters == 4 and vol.num_allocated_clusters == 0
    assert vol.thin and vol.parent is snap and snap.children == [vol]
    with pytest.raises(OperationError) as e:
        await store.snapshot(snap, "snap2")  # a snapshot of a snapshot
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OperationError) as e:
        await write(snap, 0, b"x" * 4096)
    assert e.value.errno == errno.EPERM
    await write(vol, MiB, pattern(0xEE, 4096))  # copy-on-write: the rest of the cluster kept
    assert await read(vol, MiB, 8192) == pattern(0xEE, 4096) + pattern(0xDD, 4096)
    assert await read(snap, MiB, 4096) == pattern(0xDD, 4096)
    with pytest.raises(OperationError) as e:
        await store.clone(vol, "c")  # the source must be read-only
    assert e.value.errno == errno.EINVAL
    clone = await store.clone(snap, "clone")
    assert await read(clone, MiB, 4096) == pattern(0xDD, 4096)
    assert sorted(c.name for c in snap.children) == ["clone", "vol"]
    with pytest.raises(OperationError) as e:
        await store.delete_lvol(snap)  # two clones
    assert e.value.errno == errno.EPERM
    again = await reload(base)
    s2 = again.find("snap")
    assert s2 is not None and sorted(c.name for c in s2.children) == ["clone", "vol"]
    await store.delete_lvol(clone)
    free = store.free_clusters
    await store.delete_lvol(snap)  # one clone left: merged into it
    assert vol.parent is None and vol.num_allocated_clusters == 4
    assert store.free_clusters == free + 1  # the cluster vol had rewritten
    assert await read(vol, 0, 4 * MiB) == (pattern(0xDD, MiB) + pattern(0xEE, 4096)
                                           + pattern(0xDD, 3 * MiB - 4096))
    await reload(base)


async def test_inflate_and_decouple(base: Descriptor) -> None:
    store = await LvolStore.create(base, "lvs0", cluster_size=CS)
    vol = await store.create_lvol("vol", 5 * MiB, thin=True)
    await write(vol, 0, pattern(0xDD, 4096))
    snap = await store.snapshot(vol, "snap")
    await write(vol, MiB, pattern(0xEE, 4096))
    snap2 = await store.snapshot(vol, "snap2")
    await write(vol, 2 * MiB, pattern(0xCC, 4096))
    expect = [pattern(0xDD, 4096), pattern(0xEE, 4096), pattern(0xCC, 4096), bytes(4096)]

    async def data() -> list[bytes]:
        return [await read(vol, i * MiB, 4096) for i in range(4)]

    assert await data() == expect
    with pytest.raises(OperationError) as e:
        await store.decouple_parent(snap)
    assert e.value.errno == errno.EINVAL
    await store.decouple_parent(vol)  # copies snap2's own cluster; parent is now snap
    assert vol.parent is snap and vol.num_allocated_clusters == 2 and await data() == expect
    await store.delete_lvol(snap2)
    await store.decouple_parent(vol)
    assert vol.parent is None and vol.thin and await data() == expect
    await store.delete_lvol(snap)
    assert check_store(store).ok
    snap3 = await store.snapshot(vol, "snap3")
    clone = await store.clone(snap3, "clone")
    await store.inflate(clone)
    assert not clone.thin and clone.parent is None and clone.num_allocated_clusters == 5
    await store.delete_lvol(snap3)  # vol merges; clone is independent
    assert [await read(clone, i * MiB, 4096) for i in range(4)] == expect
    await reload(base)


async def test_requests_queued_by_a_shrink_past_its_new_end_fail(base: Descriptor) -> None:
    """A request checked against the old size waits out the shrink's freeze; it is failed,
    not run against clusters that are gone (and the ones inside still run)."""
    store = await LvolStore.create(base, "lvs0", cluster_size=CS)
    lvol = await store.create_lvol("thick", 4 * MiB)
    # Frozen from outside, so that the requests below surely wait across the shrink (on
    # a malloc base the shrink alone may never yield while it holds the freeze).
    await lvol.freeze()
    results: dict[str, int] = {}
    all_done = asyncio.Event()

    def record(name: str) -> Callback:
        def done(status: int, _data: Any) -> None:
            results[name] = status
            if len(results) == 5:
                all_done.set()

        return done

    lvol.write(3 * MiB, b"\x5a" * 4096, record("write past"))
    lvol.read(3 * MiB, 4096, record("read past"))
    lvol.unmap(2 * MiB, MiB, record("unmap past"))
    lvol.write_zeroes(MiB + 512, MiB, record("zeroes across"))
    lvol.write(MiB, b"\x5a" * 4096, record("write inside"))
    await store.resize(lvol, 2 * MiB)
    assert results == {}
    lvol.unfreeze()
    await asyncio.wait_for(all_done.wait(), 10)  # the write inside completes later on aio
    assert results == {"write past": -errno.EINVAL, "read past": -errno.EINVAL,
                       "unmap past": -errno.EINVAL, "zeroes across": -errno.EINVAL,
                       "write inside": 0}
    assert await _call(lambda cb: lvol.read(MiB, 4096, cb)) == b"\x5a" * 4096


async def test_resize_rename_read_only_grow(base: Descriptor) -> None:
    store = await LvolStore.create(base, "lvs0", cluster_size=CS)
    free = store.free_clusters
    thick = await store.create_lvol("thick", 2 * MiB)
    thin = await store.create_lvol("thin", MiB, thin=True)
    await store.resize(thick, 5 * MiB - 1)
    await store.resize(thin, 100 * MiB)  # thin may exceed the store
    assert thick.num_clusters == 5 and store.free_clusters == free - 5
    with pytest.raises(OperationError) as e:
        await store.resize(thick, 1000 * MiB)
    assert e.value.errno == errno.ENOSPC and thick.num_clusters == 5
    await store.resize(thick, MiB)
    assert store.free_clusters == free - 1
    await store.rename_lvol(thin, "renamed")
    with pytest.raises(OperationError) as e:
        await store.rename_lvol(thick, "renamed")
    assert e.value.errno == errno.EEXIST
    await store.rename("lvs1")
    await store.set_read_only(thick)
    with pytest.raises(OperationError) as e:
        await store.resize(thick, 2 * MiB)
    assert e.value.errno == errno.EPERM
    with pytest.raises(OperationError) as e:
        await store.rename_lvol(thick, "x")
    assert e.value.errno == errno.EPERM
    await store.grow()  # same size: a no-op
    again = await reload(base)
    assert again.name == "lvs1" and again.find("renamed") is not None
    t = again.find("thick")
    assert t is not None and t.read_only and t.num_clusters == 1
    assert again.lvols[thin.uuid].num_clusters == 100


async def test_grow_after_the_base_grew(layer: BdevLayer, tmp_path: Path) -> None:
    path = tmp_path / "grow.img"
    with path.open("wb") as f:
        f.truncate(32 * MiB)
    aio = layer.module(AioModule)
    await aio.create(name="G", filename=str(path), block_size=4096)
    desc = layer.open("G", write=True)
    try:
        store = await LvolStore.create(desc, "lvs", cluster_size=CS)
        before = store.total_data_clusters
        with path.open("r+b") as f:
            f.truncate(48 * MiB)
        await aio.rescan("G")
        await store.grow()
        assert store.total_data_clusters == before + 16
        assert (await reload(desc)).total_data_clusters == before + 16
    finally:
        desc.close()


# -- crash safety ----------------------------------------------------------------------
class CutDescriptor:
    """A descriptor whose writes after the first ``budget`` are acknowledged but dropped."""

    def __init__(self, desc: Descriptor, budget: int, rng: random.Random) -> None:
        self._desc = desc
        self.bdev = desc.bdev
        self.budget = budget
        self.rng = rng
        self.can_unmap = desc.bdev.supports("unmap")
        self.inline = False  # as BaseIo: the lvols count writes in flight

    def __getattr__(self, name: str) -> Any:
        return getattr(self._desc, name)

    def _cut(self) -> bool:
        self.budget -= 1
        return self.budget < 0

    def write(self, offset: int, data: Any, cb: Callback, fua: bool = False) -> None:
        if self._cut():
            if self.budget == -1 and len(data) > self.bdev.block_size:
                # the write being cut is torn: a prefix of its blocks lands
                bs = self.bdev.block_size
                keep = self.rng.randrange(1, len(data) // bs) * bs
                self._desc.write(offset, memoryview(data)[:keep], lambda *_: cb(0, None), fua)
                return
            cb(0, None)
            return
        self._desc.write(offset, data, cb, fua)

    def write_async(self, offset: int, data: Any, fua: bool = False) -> Awaitable[None]:
        return _call(lambda cb: self.write(offset, data, cb, fua))

    def write_zeroes(self, offset: int, length: int, cb: Callback) -> None:
        if self._cut():
            cb(0, None)
            return
        self._desc.write_zeroes(offset, length, cb)

    def write_zeroes_async(self, offset: int, length: int) -> Awaitable[None]:
        return _call(lambda cb: self.write_zeroes(offset, length, cb))

    def unmap(self, offset: int, length: int, cb: Callback) -> None:
        if self._cut():
            cb(0, None)
            return
        self._desc.unmap(offset, length, cb)

    def unmap_async(self, offset: int, length: int) -> Awaitable[None]:
        return _call(lambda cb: self.unmap(offset, length, cb))


async def _random_operations(store: LvolStore, rng: random.Random, steps: int,
                             durable: dict[tuple[str, int], bytes]) -> None:
    """Random operations; ``durable`` gets (lvol uuid, cluster) -> data of committed writes."""
    for step in range(steps):
        vols = [v for v in store.lvols.values() if not v.read_only]
        snaps = [v for v in store.lvols.values() if v.read_only]
        op = rng.choice(["create", "write", "write", "write", "snapshot", "clone", "resize",
                         "delete", "inflate", "decouple", "rename", "unmap"])
        try:
            if op == "create" or not vols:
                await store.create_lvol(f"v{step}", rng.randint(1, 6) * MiB,
                                        thin=rng.random() < 0.7)
            elif op == "write":
                v = rng.choice(vols)
                if v.num_clusters:
                    idx = rng.randrange(v.num_clusters)
                    data = bytes([rng.randrange(1, 256)]) * 4096
                    allocated = bool(v.clusters[idx])
                    await write(v, idx * MiB, data)
                    # A write to an allocated cluster is not behind a commit; only the
                    # ones that allocated are (and their data landed before the commit).
                    if not allocated:
                        durable[(v.uuid, idx)] = data
            elif op == "snapshot":
                await store.snapshot(rng.choice(vols), f"s{step}")
            elif op == "clone" and snaps:
                await store.clone(rng.choice(snaps), f"c{step}")
            elif op == "resize":
                await store.resize(rng.choice(vols), rng.randint(0, 6) * MiB)
            elif op == "delete":
                await store.delete_lvol(rng.choice(list(store.lvols.values())))
            elif op == "inflate":
                await store.inflate(rng.choice(vols))
            elif op == "decouple":
                await store.decouple_parent(rng.choice(vols))
            elif op == "rename":
                await store.rename_lvol(rng.choice(vols), f"r{step}")
            elif op == "unmap":
                v = rng.choice(vols)
                if v.num_clusters:
                    await _call(lambda cb, v=v: v.unmap(0, MiB, cb))
        except OperationError as e:
            assert e.errno in (errno.EINVAL, errno.EPERM, errno.ENOSPC, errno.EEXIST), e


@pytest.mark.parametrize("seed", range(24))
async def test_crash_loop(layer: BdevLayer, seed: int) -> None:
    """Cut the writes at a random point of a random workload; the store must load clean."""
    rng = random.Random(seed)
    layer.module(MallocModule).create(name=f"C{seed}", block_size=512,
                                      num_blocks=32 * MiB // 512)
    desc = layer.open(f"C{seed}", write=True)
    try:
        store = await LvolStore.create(desc, "lvs", cluster_size=CS)
        durable: dict[tuple[str, int], bytes] = {}
        await _random_operations(store, rng, 20, durable)
        # Snapshots never change: what they read now they must read after the crash.
        frozen = {v.uuid: [await read(v, i * MiB, 4096) for i in range(v.num_clusters)]
                  for v in store.lvols.values() if v.read_only}
        # From here on, writes vanish after a random number of them.
        cut = CutDescriptor(desc, rng.randrange(0, 60), rng)
        store.desc = cut  # type: ignore[assignment]
        store.set_io(cut)  # type: ignore[arg-type]
        await _random_operations(store, rng, 30, {})
        after = await LvolStore.load(desc)
        report = check_store(after)
        assert report.ok, report.problems
        for u, blocks in frozen.items():
            v = after.lvols.get(u)
            if v is not None:
                assert [await read(v, i * MiB, 4096) for i in range(len(blocks))] == blocks
        assert (await check_base(desc)).ok
    finally:
        desc.close()


async def test_checker_reports_what_is_wrong(base: Descriptor) -> None:
    store = await LvolStore.create(base, "lvs0", cluster_size=CS)
    a = await store.create_lvol("a", 2 * MiB)
    b = await store.create_lvol("b", 2 * MiB, thin=True)
    assert check_store(store).ok
    b.clusters[0] = a.clusters[0]  # two owners
    b.clusters[1] = 1_000_000  # outside the device
    a.clusters[1] = 0  # a thick lvol with a hole
    problems = check_store(store).problems
    assert any("owned by" in p for p in problems), problems
    assert any("outside the data area" in p for p in problems), problems
    assert any("thick but cluster 1" in p for p in problems), problems
    assert any("free_clusters" in p or "marked used" in p for p in problems), problems
    # What is on disk is still the last commit, and that one is sound.
    assert (await check_base(base)).ok
