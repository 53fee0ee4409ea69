"""The lvol module on the vbdev framework: the lvstore's claim, its lvols as parts, hot-remove.

In process, on an aio base (so a removed base can come back with its store): an lvstore is
the framework's attachment of its base, holds the base claimed with or without lvols, and a
removed base takes its lvols and then the store; examine finds the store again.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pybdev.bdev.aio import AioModule
from pybdev.bdev.core import BdevLayer, BdevState, ClaimType
from pybdev.bdev.lvol.module import LvolBdev, LvolModule
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
    seen = []
    consumer.event_cb = lambda event, bdev: (seen.append(event), consumer.close())
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
