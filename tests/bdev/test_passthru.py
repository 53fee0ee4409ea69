"""passthru through the Python API (SPDK's module/bdev/passthru)."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import uuid as uuidlib

import pytest

from pybdev.bdev.core import BdevLayer, BdevState
from pybdev.bdev.malloc import MallocModule
from pybdev.bdev.null import NullModule
from pybdev.bdev.passthru import NAMESPACE, PassthruBdev, PassthruModule, sha1_uuid
from pybdev.errors import OperationError

from .conftest import complete, module, read, status


def libuuid_sha1(namespace: uuidlib.UUID, name: bytes) -> str | None:
    """The reference: libuuid's uuid_generate_sha1, which SPDK calls when it has it."""
    path = ctypes.util.find_library("uuid")
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    if not hasattr(lib, "uuid_generate_sha1"):
        return None
    out = ctypes.create_string_buffer(16)
    ns = ctypes.create_string_buffer(namespace.bytes, 16)
    lib.uuid_generate_sha1(out, ns, ctypes.c_char_p(name), ctypes.c_size_t(len(name)))
    return str(uuidlib.UUID(bytes=out.raw))


def test_derived_uuid_matches_libuuid() -> None:
    base = uuidlib.UUID("8e7a8f4a-7c1f-4f3e-9a53-0c6d2f3b9a10")
    ours = sha1_uuid(NAMESPACE, base.bytes)
    assert uuidlib.UUID(ours).version == 5
    ref = libuuid_sha1(NAMESPACE, base.bytes)
    if ref is None:
        pytest.skip("libuuid with uuid_generate_sha1 not found for the cross-check")
    assert ours == ref


async def test_create_copies_properties_claims_and_forwards_io(layer: BdevLayer) -> None:
    base = module(layer, MallocModule).create(name="M", block_size=4096, num_blocks=32,
                                             optimal_io_boundary=8)
    pt = module(layer, PassthruModule).create(base_bdev_name="M", name="PT")
    assert pt == "PT"
    bdev = layer.get("PT")
    assert isinstance(bdev, PassthruBdev)
    assert bdev.uuid == sha1_uuid(NAMESPACE, uuidlib.UUID(base.uuid).bytes)
    assert (bdev.block_size, bdev.num_blocks, bdev.write_cache, bdev.optimal_io_boundary,
            bdev.numa_id, bdev.io_types) == (4096, 32, True, 8, -1, base.io_types)
    info = bdev.info()
    assert info["product_name"] == "passthru" and info["numa_id"] == -1
    assert info["driver_specific"] == {"passthru": {"name": "PT", "base_bdev_name": "M"}}
    assert info["supported_io_types"] == base.info()["supported_io_types"]
    assert base.claim_module == "passthru"
    with pytest.raises(OperationError) as e:
        layer.open("M", write=True)
    assert e.value.errno == errno.EPERM

    desc = layer.open("PT", write=True)
    pattern = bytes(range(256)) * 64
    await desc.write_async(4096, pattern)
    base_desc = layer.open("M", write=False)
    assert await read(base_desc, 4096, len(pattern)) == pattern  # it reached the base
    await desc.unmap_async(4096, 4096)
    await desc.write_zeroes_async(8192, 4096)
    assert await read(desc, 4096, 3 * 4096) == bytes(8192) + pattern[8192:12288]
    assert complete(lambda cb: desc.flush(0, 4096, cb)) == (0, None)
    assert complete(desc.reset) == (0, None)
    assert status(lambda cb: desc.read(4096 * 32, 4096, cb)) == -errno.EINVAL
    # Both layers count the requests.
    assert bdev.stat.to_json("PT")["num_write_ops"] == 2
    assert base.stat.to_json("M")["num_write_ops"] == 2
    base_desc.close()
    desc.close()


async def test_given_uuid_and_io_types_of_base(layer: BdevLayer) -> None:
    module(layer, NullModule).create(name="N", block_size=512, num_blocks=64)
    u = str(uuidlib.uuid4())
    module(layer, PassthruModule).create(base_bdev_name="N", name="PT", uuid=u)
    bdev = layer.get("PT")
    assert bdev is not None and bdev.uuid == u and layer.get(u) is bdev
    desc = layer.open("PT", write=True)
    assert status(lambda cb: desc.unmap(0, 512, cb)) == -errno.ENOTSUP  # null has no unmap
    assert "numa_id" not in bdev.info()  # null sets none, so neither does the passthru
    desc.close()


async def test_deferred_until_the_base_registers_by_primary_name(layer: BdevLayer) -> None:
    pm = module(layer, PassthruModule)
    assert pm.create(base_bdev_name="Later", name="PT") == "PT"
    assert layer.get("PT") is None and pm.write_config() == []
    with pytest.raises(OperationError) as e:
        await pm.delete("PT")  # a deferred passthru cannot be deleted...
    assert e.value.errno == errno.ENODEV
    assert [a.name for a in pm.associations] == ["PT"]  # ...and its association stays
    module(layer, MallocModule).create(name="Later", block_size=512, num_blocks=8)
    assert layer.get("PT") is not None
    assert pm.write_config()[0]["params"]["base_bdev_name"] == "Later"


async def test_duplicate_name_and_claimed_base(layer: BdevLayer) -> None:
    module(layer, MallocModule).create(name="M", block_size=512, num_blocks=8)
    pm = module(layer, PassthruModule)
    pm.create(base_bdev_name="M", name="PT")
    with pytest.raises(OperationError) as e:
        pm.create(base_bdev_name="Other", name="PT")
    assert e.value.errno == errno.EEXIST
    with pytest.raises(OperationError) as e:
        pm.create(base_bdev_name="M", name="PT2")  # M is claimed by PT
    assert e.value.errno == errno.EPERM
    # The failed association stays (SPDK): the same name is now taken.
    with pytest.raises(OperationError) as e:
        pm.create(base_bdev_name="M", name="PT2")
    assert e.value.errno == errno.EEXIST
    # A name clash at register is -17 and leaves the base unclaimed.
    module(layer, MallocModule).create(name="M2", block_size=512, num_blocks=8)
    with pytest.raises(OperationError) as e:
        pm.create(base_bdev_name="M2", name="M")
    assert e.value.errno == errno.EEXIST
    m2 = layer.get("M2")
    assert m2 is not None and m2.claim_module is None and not m2.descriptors


async def test_base_removal_keeps_the_association(layer: BdevLayer) -> None:
    malloc = module(layer, MallocModule)
    pm = module(layer, PassthruModule)
    base = malloc.create(name="M", block_size=512, num_blocks=8)
    pm.create(base_bdev_name="M", name="PT")
    pt = layer.get("PT")
    assert pt is not None
    await asyncio.wait_for(layer.unregister(base), 5)  # the stack comes down from the top
    assert pt.state is BdevState.GONE and layer.get("PT") is None and list(layer) == []
    assert pm.write_config() == []
    malloc.create(name="M", block_size=512, num_blocks=8)
    again = layer.get("PT")
    assert again is not None and again is not pt and again.uuid != pt.uuid  # new base UUID
    await pm.delete("PT")
    assert pm.associations == [] and layer.get("M").claim_module is None  # type: ignore[union-attr]
    await layer.unregister_by_name("M", "malloc")
    malloc.create(name="M", block_size=512, num_blocks=8)
    assert layer.get("PT") is None  # deleted: not rebuilt


async def test_base_resize_resizes_the_passthru(layer: BdevLayer) -> None:
    null = module(layer, NullModule)
    null.create(name="N", block_size=512, num_blocks=2048)
    module(layer, PassthruModule).create(base_bdev_name="N", name="PT")
    null.resize("N", 4)
    await asyncio.sleep(0)
    assert layer.get("PT").num_blocks == 8192  # type: ignore[union-attr]
