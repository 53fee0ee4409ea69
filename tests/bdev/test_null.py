"""null through the Python API (SPDK's module/bdev/null)."""

from __future__ import annotations

import asyncio
import errno

import pytest

from pybdev.bdev.core import BdevEvent, BdevLayer
from pybdev.bdev.null import NullModule
from pybdev.errors import OperationError

from .conftest import complete, module, read, status

MIB = 1 << 20


async def test_writes_are_discarded_reads_return_zeros(layer: BdevLayer) -> None:
    b = module(layer, NullModule).create(name="N", block_size=512, num_blocks=16384)
    b.stat.reset("all")  # the lvol module's examine read the bdev
    assert (b.size, b.write_cache, b.numa_id) == (8 * MIB, False, None)
    desc = layer.open("N", write=True)
    await desc.write_async(0, b"\xaa" * 4096)
    assert await read(desc, 0, 4096) == bytes(4096)
    assert await read(desc, 0, 8 * MIB) == bytes(8 * MIB)  # beyond the shared zero buffer
    await desc.write_zeroes_async(0, 4096)
    assert complete(desc.reset) == (0, None)
    # No flush and no unmap, as SPDK's null.
    assert status(lambda cb: desc.flush(0, 512, cb)) == -errno.ENOTSUP
    assert status(lambda cb: desc.unmap(0, 512, cb)) == -errno.ENOTSUP
    io = b.info()["supported_io_types"]
    assert [t for t, v in io.items() if v] == ["read", "write", "reset", "write_zeroes", "abort"]
    st = b.stat.to_json("N")
    assert (st["num_write_ops"], st["num_read_ops"]) == (2, 2)
    desc.close()


async def test_metadata_is_interleaved_and_geometry_reported(layer: BdevLayer) -> None:
    b = module(layer, NullModule).create(
        name="N", block_size=4096, num_blocks=8, md_size=64, physical_block_size=0,
        preferred_write_alignment=8, preferred_write_granularity=16, optimal_write_size=32,
        preferred_unmap_alignment=64, preferred_unmap_granularity=128)
    assert b.block_size == 4160 and b.physical_block_size == 4096
    info = b.info()
    keys = list(info)
    assert keys[:12] == ["name", "aliases", "product_name", "block_size", "num_blocks",
                         "preferred_write_alignment", "preferred_write_granularity",
                         "optimal_write_size", "preferred_unmap_alignment",
                         "preferred_unmap_granularity", "uuid", "md_size"]
    assert [info[k] for k in keys[5:10]] == [8, 16, 32, 64, 128]
    assert (info["md_size"], info["md_interleave"], info["dif_type"]) == (64, True, 0)
    assert "numa_id" not in info
    cfg = b.config_params()
    assert cfg["block_size"] == 4096 and cfg["md_size"] == 64  # replays to the same bdev


async def test_resize(layer: BdevLayer) -> None:
    null = module(layer, NullModule)
    b = null.create(name="N", block_size=512, num_blocks=2 * MIB // 512)
    seen: list[BdevEvent] = []
    desc = layer.open("N", write=False, event_cb=lambda ev, _b: seen.append(ev))
    null.resize("N", 2)  # same size: nothing happens
    null.resize("N", 5)
    assert b.num_blocks == 5 * MIB // 512
    for name, size, code in (("N", 4, errno.EINVAL), ("nope", 8, errno.ENODEV)):
        with pytest.raises(OperationError) as e:
            null.resize(name, size)
        assert e.value.errno == code
    await asyncio.sleep(0)  # events are delivered asynchronously
    assert seen == [BdevEvent.RESIZE]
    desc.close()
    await null.delete("N")


async def test_resize_of_another_module_is_einval(layer: BdevLayer) -> None:
    from pybdev.bdev.malloc import MallocModule

    module(layer, MallocModule).create(name="M", block_size=512, num_blocks=8)
    with pytest.raises(OperationError) as e:
        module(layer, NullModule).resize("M", 8)
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize(("kwargs", "code"), [
    ({"md_size": 12}, errno.EINVAL),
    ({"block_size": 1000}, errno.EINVAL),
    ({"physical_block_size": 100}, errno.EINVAL),
    ({"num_blocks": 0}, errno.EINVAL),
    ({"block_size": 0}, errno.EINVAL),
    ({"dif_type": 1}, errno.EINVAL),  # DIF without metadata
    ({"dif_type": 1, "md_size": 8, "dif_pi_format": 2}, errno.EINVAL),  # 16-byte PI
])
async def test_validation(layer: BdevLayer, kwargs: dict[str, int], code: int) -> None:
    args = {"name": "N", "block_size": 512, "num_blocks": 8, **kwargs}
    with pytest.raises(OperationError) as e:
        module(layer, NullModule).create(**args)
    assert e.value.errno == code
    assert list(layer) == []


async def test_delete(layer: BdevLayer) -> None:
    null = module(layer, NullModule)
    null.create(name="N", block_size=512, num_blocks=8)
    with pytest.raises(OperationError) as e:
        await null.delete("nope")
    assert e.value.errno == errno.ENODEV
    await null.delete("N")
    assert list(layer) == [] and null.write_config() == [[]]
