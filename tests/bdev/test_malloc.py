"""malloc through the Python API: data, zeros, naming and validation (spec §4.7)."""

from __future__ import annotations

import errno

import pytest

from pybdev.bdev.core import BdevLayer
from pybdev.bdev.malloc import MallocModule
from pybdev.errors import OperationError

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
    ({"md_size": 8}, errno.EOPNOTSUPP),
])
async def test_validation(layer: BdevLayer, kwargs: dict[str, int], code: int) -> None:
    args = {"name": "M", "block_size": 512, "num_blocks": 8, **kwargs}
    with pytest.raises(OperationError) as e:
        module(layer, MallocModule).create(**args)
    assert e.value.errno == code
    assert list(layer) == []
