"""The lvol module on the vbdev framework: the lvstore's claim, its lvols as parts, hot-remove.

In process, on an aio base (so a removed base can come back with its store): an lvstore is
the framework's attachment of its base, holds the base claimed with or without lvols, and a
removed base takes its lvols and then the store; examine finds the store again.
"""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

import pytest

from pybdev.bdev.aio import AioModule
from pybdev.bdev.core import Bdev, BdevEvent, BdevLayer, BdevState, ClaimType
from pybdev.bdev.lvol.module import LvolBdev, LvolModule
from pybdev.bdev.malloc import MallocModule
from pybdev.errors import OperationError

MiB = 1 << 20


async def _aio_base(layer: BdevLayer, path: Path) -> None:
    if not path.exists():
        with path.open("wb") as f:
            f.truncate(64 * MiB)
    await layer.module(AioModule).create(name="A0", filename=str(path), block_size=4096)
    await layer.wait_for_examine()


async def test_store_holds_its_base_with_and_without_lvols(layer: BdevLayer,
                                                           tmp_path: Path) -> None:
    await _aio_base(layer, tmp_path / "a.img")
    lv = layer.module(LvolModule)
    await lv.create_lvstore("A0", "lvs", cluster_sz=MiB)
    base = layer.get("A0")
    assert base is not None and base.claim_type is ClaimType.READ_MANY_WRITE_ONE
    assert [c.module for c in base.claims] == ["lvol"]
    with pytest.raises(OperationError):
        layer.open("A0", write=True)  # claimed: nobody else writes the base
    store = lv.stores[0]
    attachment = lv.attachment_of(store)
    assert attachment.module is lv and attachment.descs == [store.desc]

    uuid = await lv.create_lvol(store, "v1", 4 * MiB, thin=False, clear_method="default")
    bdev = layer.get(uuid)
    assert isinstance(bdev, LvolBdev) and bdev.attachment is attachment
    assert attachment.bdevs == [bdev] and layer.get("lvs/v1") is bdev

    # The last lvol going does not release the base, unlike other vbdevs' last part.
    await lv.delete_lvol(bdev.lvol)
    assert attachment.bdevs == [] and not store.desc.closed
    assert base.claim_type is ClaimType.READ_MANY_WRITE_ONE

    await lv.delete_lvstore(store)
    assert lv.stores == [] and store.desc.closed and base.claim_type is ClaimType.NONE
    assert base.descriptors == set()


async def test_hot_remove_takes_lvols_then_store_and_examine_brings_them_back(
        layer: BdevLayer, tmp_path: Path) -> None:
    image = tmp_path / "b.img"
    await _aio_base(layer, image)
    lv = layer.module(LvolModule)
    await lv.create_lvstore("A0", "lvs", cluster_sz=MiB)
    store = lv.stores[0]
    snap_origin = await lv.create_lvol(store, "v1", 4 * MiB, thin=True, clear_method="default")
    origin = layer.get(snap_origin)
    assert isinstance(origin, LvolBdev)
    await lv.snapshot(origin.lvol, "s1")
    consumer = layer.open("lvs/v1", write=True)  # an export's descriptor, say
    seen: list[BdevEvent] = []

    def on_event(event: BdevEvent, _bdev: Bdev) -> None:
        seen.append(event)
        consumer.close()

    consumer.event_cb = on_event
    lvols = [b for b in layer if isinstance(b, LvolBdev)]
    assert len(lvols) == 2

    await layer.module(AioModule).delete("A0")
    assert seen and all(b.state is BdevState.GONE for b in lvols)
    assert lv.stores == [] and store.desc.closed and layer.get("A0") is None

    # The base comes back: examine loads the store and registers both lvols again.
    await _aio_base(layer, image)
    assert [s.name for s in lv.stores] == ["lvs"]
    names = sorted(a for b in layer if isinstance(b, LvolBdev) for a in b.aliases
                   if a.startswith("lvs/"))
    assert names == ["lvs/s1", "lvs/v1"]
    base = layer.get("A0")
    assert base is not None and base.claim_type is ClaimType.READ_MANY_WRITE_ONE


async def test_empty_store_hot_remove_releases_the_base(layer: BdevLayer,
                                                        tmp_path: Path) -> None:
    await _aio_base(layer, tmp_path / "c.img")
    lv = layer.module(LvolModule)
    await lv.create_lvstore("A0", "lvs", cluster_sz=MiB)
    store = lv.stores[0]
    await layer.module(AioModule).delete("A0")  # waits for the store to close its descriptor
    assert store.desc.closed and lv.stores == []


# -- the offset path of thick lvols ----------------------------------------------------
async def _io(submit: Any) -> Any:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    submit(lambda status, data: fut.set_result((status, None if data is None
                                                else bytes(data))))
    return await fut


async def test_thick_lvol_forwards_with_an_offset_until_its_layout_changes(
        layer: BdevLayer) -> None:
    layer.module(MallocModule).create(name="M0", block_size=512, num_blocks=64 * MiB // 512)
    lv = layer.module(LvolModule)
    await lv.create_lvstore("M0", "lvs", cluster_sz=MiB)
    store = lv.stores[0]
    thin = layer.get(await lv.create_lvol(store, "thin", 8 * MiB, thin=True,
                                          clear_method="default"))
    thick = layer.get(await lv.create_lvol(store, "thick", 4 * MiB, thin=False,
                                           clear_method="default"))
    assert isinstance(thin, LvolBdev) and isinstance(thick, LvolBdev)
    assert thin.offset is None  # thin: the cluster map, always
    first = thick.lvol.clusters[0]
    assert thick.offset == first * MiB and list(thick.lvol.clusters) == [
        first + i for i in range(4)]
    base = layer.open("M0", write=False)
    desc = layer.open("lvs/thick", write=True)
    tdesc = layer.open("lvs/thin", write=True)
    try:
        assert await _io(lambda cb: desc.write(MiB + 4096, b"a" * 4096, cb)) == (0, None)
        assert (await base.read_async(first * MiB + MiB + 4096, 4096)) == b"a" * 4096
        # Across a cluster boundary, in one request: the run makes it one base request.
        await desc.write_async(MiB - 512, b"b" * 1024)
        assert (await base.read_async(first * MiB + MiB - 512, 1024)) == b"b" * 1024

        # The thin lvol takes the next cluster, so growing the thick one breaks its run.
        await tdesc.write_async(0, b"t" * 4096)
        await lv.resize(thick.lvol, 6 * MiB)
        assert thick.offset is None
        await desc.write_async(5 * MiB, b"c" * 4096)
        phys = thick.lvol.clusters[5]
        assert phys != first + 5
        assert (await base.read_async(phys * MiB, 4096)) == b"c" * 4096
        assert (await tdesc.read_async(0, 4096)) == b"t" * 4096

        # A snapshot moves the clusters away: the origin reads them through its parent.
        other = layer.get(await lv.create_lvol(store, "run", 2 * MiB, thin=False,
                                               clear_method="default"))
        assert isinstance(other, LvolBdev) and other.offset is not None
        odesc = layer.open("lvs/run", write=True)
        await odesc.write_async(0, b"d" * 4096)
        await lv.snapshot(other.lvol, "snap")
        assert other.offset is None and other.lvol.thin
        await odesc.write_async(4096, b"e" * 4096)
        assert (await odesc.read_async(0, 8192)) == b"d" * 4096 + b"e" * 4096
        snap = layer.open("lvs/snap", write=False)
        assert (await snap.read_async(0, 8192)) == b"d" * 4096 + bytes(4096)
        snap.close()
        odesc.close()

        # Read-only: writes are refused, reads still take the offset path.
        plain = layer.get(await lv.create_lvol(store, "ro", 1 * MiB, thin=False,
                                               clear_method="default"))
        assert isinstance(plain, LvolBdev)
        rdesc = layer.open("lvs/ro", write=True)
        await rdesc.write_async(0, b"f" * 512)
        await store.set_read_only(plain.lvol)
        assert plain.offset is not None
        assert (await _io(lambda cb: rdesc.write(0, b"g" * 512, cb)))[0] == -errno.EPERM
        assert (await rdesc.read_async(0, 512)) == b"f" * 512
        rdesc.close()
    finally:
        base.close()
        desc.close()
        tdesc.close()


async def test_thick_lvol_on_an_async_base_counts_its_writes(layer: BdevLayer,
                                                             tmp_path: Path) -> None:
    await _aio_base(layer, tmp_path / "d.img")
    lv = layer.module(LvolModule)
    await lv.create_lvstore("A0", "lvs", cluster_sz=MiB)
    thick = layer.get(await lv.create_lvol(lv.stores[0], "v", 4 * MiB, thin=False,
                                           clear_method="default"))
    assert isinstance(thick, LvolBdev) and thick.offset is not None
    # aio completes later: writes go through the lvol, which counts them for a freeze.
    assert thick.submit_write == thick.lvol.write
    desc = layer.open("lvs/v", write=True)
    try:
        await desc.write_async(8192, b"h" * 4096)
        assert (await desc.read_async(8192, 4096)) == b"h" * 4096
        assert thick.lvol.inflight == 0
    finally:
        desc.close()


async def test_nested_store_counts_writes_on_an_lvol(layer: BdevLayer) -> None:
    """An lvol does not complete inside the call (a freeze queues): a store on it counts
    its thick lvols' writes, so the inner store's freezes wait for them."""
    layer.module(MallocModule).create(name="M0", block_size=512, num_blocks=64 * MiB // 512)
    lv = layer.module(LvolModule)
    await lv.create_lvstore("M0", "outer", cluster_sz=MiB)
    await lv.create_lvol(lv.stores[0], "big", 32 * MiB, thin=False, clear_method="default")
    await lv.create_lvstore("outer/big", "inner", cluster_sz=MiB)
    inner_store = next(s for s in lv.stores if s.name == "inner")
    inner = layer.get(await lv.create_lvol(inner_store, "v", 4 * MiB, thin=False,
                                           clear_method="default"))
    assert isinstance(inner, LvolBdev) and inner.offset is not None
    assert inner.submit_write == inner.lvol.write  # counted, not the offset path
    desc = layer.open("inner/v", write=True)
    try:
        await desc.write_async(4096, b"n" * 4096)
        assert (await desc.read_async(4096, 4096)) == b"n" * 4096
    finally:
        desc.close()
