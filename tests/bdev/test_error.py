"""The error injection vbdev through the Python API (SPDK's module/bdev/error)."""

from __future__ import annotations

import asyncio
import errno
import uuid as uuidlib
from typing import Any

import pytest

from pybdev.bdev.core import Bdev, BdevLayer, Callback, Descriptor
from pybdev.bdev.error import PART_NAMESPACE, ErrorBdev, ErrorModule, part_uuid
from pybdev.bdev.malloc import MallocModule
from pybdev.bdev.passthru import sha1_uuid
from pybdev.errors import OperationError

from .conftest import complete, module, read, status

EIO, ENOMEM, ECANCELED = -errno.EIO, -errno.ENOMEM, -errno.ECANCELED


async def error_on_malloc(layer: BdevLayer) -> tuple[ErrorModule, Descriptor, Descriptor]:
    """EE_M over a 32 x 512 malloc M; a write descriptor on EE_M and a reader on M."""
    module(layer, MallocModule).create(name="M", block_size=512, num_blocks=32)
    em = module(layer, ErrorModule)
    em.create("M")
    return em, layer.open("EE_M", write=True), layer.open("M", write=False)


async def test_create_names_uuid_claim_and_info(layer: BdevLayer) -> None:
    base = module(layer, MallocModule).create(name="M", block_size=512, num_blocks=32)
    em = module(layer, ErrorModule)
    assert em.create("M") is None
    ee = layer.get("EE_M")
    assert isinstance(ee, ErrorBdev)
    name = uuidlib.UUID(base.uuid).bytes + (0).to_bytes(8, "little") + (32).to_bytes(8, "little")
    assert ee.uuid == part_uuid(base.uuid, 0, 32) == sha1_uuid(PART_NAMESPACE, name)
    info = ee.info()
    assert info["product_name"] == "Error Injection Disk" and info["numa_id"] == -1
    assert info["driver_specific"] == {"error_disk": {"base_bdev": "M"}}
    assert info["supported_io_types"] == base.info()["supported_io_types"]
    assert base.claim_module == "error"
    with pytest.raises(OperationError) as e:
        em.create("M")
    assert e.value.errno == errno.EEXIST
    assert em.write_config() == [{"method": "bdev_error_create", "params": {"base_name": "M"}}]


async def test_deferred_given_uuid_and_claimed_base(layer: BdevLayer) -> None:
    em = module(layer, ErrorModule)
    u = str(uuidlib.uuid4())
    em.create("Later", u)
    assert layer.get("EE_Later") is None
    assert em.write_config() == [
        {"method": "bdev_error_create", "params": {"base_name": "Later", "uuid": u}}]
    with pytest.raises(OperationError) as e:
        await em.delete("EE_Later")
    assert e.value.errno == errno.ENODEV
    module(layer, MallocModule).create(name="Later", block_size=512, num_blocks=8)
    assert layer.get("EE_Later").uuid == u  # type: ignore[union-attr]
    # A claimed base: -1, and the config entry is dropped again (SPDK).
    module(layer, MallocModule).create(name="C", block_size=512, num_blocks=8)
    owner = layer.open("C", write=True)
    layer.claim(owner, "someone")
    with pytest.raises(OperationError) as e:
        em.create("C")
    assert e.value.errno == errno.EPERM
    assert [c.base_name for c in em.configs] == ["Later"]
    layer.release_claim(owner.bdev)
    owner.close()


async def test_passes_through_until_armed(layer: BdevLayer) -> None:
    _em, desc, base = await error_on_malloc(layer)
    await desc.write_async(0, b"\x11" * 1024)
    assert await read(base, 0, 1024) == b"\x11" * 1024
    assert await read(desc, 0, 1024) == b"\x11" * 1024
    await desc.unmap_async(0, 512)
    await desc.write_zeroes_async(512, 512)
    await desc.flush_async()
    assert await read(desc, 0, 1024) == bytes(1024)
    desc.close()
    base.close()


@pytest.mark.parametrize("io_type", ["read", "write", "unmap", "flush"])
async def test_failure_count_then_clears(layer: BdevLayer, io_type: str) -> None:
    em, desc, base = await error_on_malloc(layer)
    em.inject_error("EE_M", io_type, "failure", num=2)

    def submit(cb: Callback) -> None:
        if io_type == "read":
            desc.read(0, 512, cb)
        elif io_type == "write":
            desc.write(0, b"\x22" * 512, cb)
        elif io_type == "unmap":
            desc.unmap(0, 512, cb)
        else:
            desc.flush(0, 512, cb)

    assert [status(submit) for _ in range(3)] == [EIO, EIO, 0]
    others = [t for t in ("read", "write") if t != io_type]
    assert status(lambda cb: desc.read(0, 512, cb) if "read" in others
                  else desc.write(0, bytes(512), cb)) == 0
    stat = layer.get("EE_M").stat.to_json("EE_M")  # type: ignore[union-attr]
    # (The core counts errors of read, write, unmap and write_zeroes, not of flush.)
    assert stat["io_error"] == ({} if io_type == "flush" else {"failed": 2})
    desc.close()
    base.close()


async def test_all_clear_nvme_and_nomem(layer: BdevLayer) -> None:
    em, desc, base = await error_on_malloc(layer)
    em.inject_error("EE_M", "all", "nvme_failure", num=5, nvme_sct=1, nvme_sc=2)
    assert status(lambda cb: desc.read(0, 512, cb)) == EIO
    assert status(lambda cb: desc.write(0, bytes(512), cb)) == EIO
    em.inject_error("EE_M", "clear", "failure")
    assert status(lambda cb: desc.read(0, 512, cb)) == 0
    assert status(lambda cb: desc.unmap(0, 512, cb)) == 0
    # nomem: the request had no effect; the bdev layer retries it until it gets through,
    # so the consumer never sees -ENOMEM.
    em.inject_error("EE_M", "write", "nomem", num=2)
    await desc.write_async(0, b"\x33" * 512)
    assert await read(base, 0, 512) == b"\x33" * 512
    stat = layer.get("EE_M").stat.to_json("EE_M")  # type: ignore[union-attr]
    assert stat["io_error"] == {"failed": 2, "nomem": 2}
    # num=0 disables.
    em.inject_error("EE_M", "read", "failure", num=0)
    assert status(lambda cb: desc.read(0, 512, cb)) == 0
    desc.close()
    base.close()


async def test_pending_until_resumed_or_reset(layer: BdevLayer) -> None:
    em, desc, base = await error_on_malloc(layer)
    em.inject_error("EE_M", "write", "pending", num=2)
    done: list[int] = []
    desc.write(0, b"\x44" * 512, lambda s, _d: done.append(s))
    desc.write(512, b"\x55" * 512, lambda s, _d: done.append(s))
    await asyncio.sleep(0.01)
    assert done == [] and await read(base, 0, 1024) == bytes(1024)
    em.resume_pending("EE_M")
    await asyncio.sleep(0.01)
    assert done == [0, 0]
    assert await read(base, 0, 1024) == b"\x44" * 512 + b"\x55" * 512
    # resume disarmed the pending injection
    assert status(lambda cb: desc.write(0, bytes(512), cb)) == 0
    em.inject_error("EE_M", "read", "pending")
    held: list[int] = []
    desc.read(0, 512, lambda s, _d: held.append(s))
    assert held == []
    assert complete(desc.reset) == (0, None)
    assert held == [ECANCELED]
    desc.close()
    base.close()


async def test_corrupt_data(layer: BdevLayer) -> None:
    em, desc, base = await error_on_malloc(layer)
    await desc.write_async(0, bytes(512))
    em.inject_error("EE_M", "read", "corrupt_data", corrupt_offset=3, corrupt_value=0xFF)
    assert complete(lambda cb: desc.read(0, 512, cb))[1] == bytes(3) + b"\xff" + bytes(508)
    assert await read(base, 0, 512) == bytes(512)  # only the copy going up was changed
    assert await read(desc, 0, 512) == bytes(512)  # num was 1
    payload = bytes(512)
    em.inject_error("EE_M", "write", "corrupt_data", num=1, corrupt_offset=0, corrupt_value=1)
    await desc.write_async(0, payload)
    assert await read(base, 0, 512) == b"\x01" + bytes(511)
    assert payload == bytes(512)  # the caller's buffer is left alone
    desc.close()
    base.close()


async def test_data_with_separate_metadata_is_injected_as_reads_and_writes(
        layer: BdevLayer) -> None:
    module(layer, MallocModule).create(name="M", block_size=512, num_blocks=32, md_size=8)
    em = module(layer, ErrorModule)
    em.create("M")
    desc = layer.open("EE_M", write=True)
    em.inject_error("EE_M", "write", "failure", num=1)
    assert status(lambda cb: desc.write_md(0, b"\x11" * 512, b"\x22" * 8, cb)) == EIO
    await desc.write_md_async(0, b"\x11" * 512, b"\x22" * 8)  # num was 1
    em.inject_error("EE_M", "read", "corrupt_data", corrupt_offset=1, corrupt_value=0xFF)
    got: list[tuple[int, bytes, bytes]] = []
    desc.read_md(0, 512, lambda s, d: got.append((s, bytes(d[0]), bytes(d[1]))))
    assert got == [(0, b"\x11\xee" + b"\x11" * 510, b"\x22" * 8)]
    em.inject_error("EE_M", "read", "failure", num=1)
    assert status(lambda cb: desc.read_md(0, 512, cb)) == EIO
    assert await desc.read_md_async(0, 512) == (b"\x11" * 512, b"\x22" * 8)
    desc.close()


class Held(Bdev):
    """Completes requests only when told: lets requests stay in flight."""

    module_name = "test"

    def __init__(self) -> None:
        super().__init__("H", 512, 64, io_types=frozenset(("read", "write")))
        self.waiting: list[Callback] = []

    def submit_read(self, offset: int, length: int, cb: Callback) -> None:
        self.waiting.append(lambda s, d: cb(s, bytes(length)))

    def submit_write(self, offset: int, data: Any, cb: Callback, fua: bool) -> None:
        self.waiting.append(cb)

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for cb in waiting:
            cb(0, None)


async def test_queue_depth_trigger(layer: BdevLayer) -> None:
    held = Held()
    layer.register(held)
    em = module(layer, ErrorModule)
    em.create("H")
    held.release()  # the reads of the examine of H and of EE_H (the lvol module's)
    desc = layer.open("EE_H", write=True)
    em.inject_error("EE_H", "read", "failure", num=1, queue_depth=2)
    results: list[int] = []
    for _ in range(3):
        desc.read(0, 512, lambda s, _d: results.append(s))
    # The first two went down (in flight 0, then 1); the third saw 2 in flight and failed.
    assert results == [EIO] and len(held.waiting) == 2
    held.release()
    assert results == [EIO, 0, 0]
    desc.close()


async def test_validation_and_unknown_bdevs(layer: BdevLayer) -> None:
    em, desc, base = await error_on_malloc(layer)
    bad: list[tuple[dict[str, Any], int]] = [
        ({"name": "EE_M", "io_type": "read", "error_type": "nvme_failure"}, errno.EINVAL),
        ({"name": "EE_M", "io_type": "read", "error_type": "failure", "nvme_sc": 1},
         errno.EINVAL),
        ({"name": "EE_M", "io_type": "read", "error_type": "corrupt_data"}, errno.EINVAL),
        ({"name": "M", "io_type": "read", "error_type": "failure"}, errno.ENODEV),
        ({"name": "nope", "io_type": "read", "error_type": "failure"}, errno.ENODEV),
    ]
    for kwargs, code in bad:
        with pytest.raises(OperationError) as e:
            em.inject_error(**kwargs)
        assert e.value.errno == code, kwargs
    with pytest.raises(OperationError) as e:
        em.resume_pending("M")
    assert e.value.errno == errno.ENODEV
    desc.close()
    base.close()


async def test_delete_and_base_removal_drop_the_config(layer: BdevLayer) -> None:
    em, desc, base = await error_on_malloc(layer)
    desc.close()
    base.close()
    with pytest.raises(OperationError) as e:
        await em.delete("M")  # not an error bdev
    assert e.value.errno == errno.ENODEV
    await em.delete("EE_M")
    assert em.configs == [] and layer.get("M").claim_module is None  # type: ignore[union-attr]
    em.create("M")
    await asyncio.wait_for(layer.unregister_by_name("M", "malloc"), 5)
    assert list(layer) == [] and em.configs == []
    module(layer, MallocModule).create(name="M", block_size=512, num_blocks=32)
    assert layer.get("EE_M") is None  # as in SPDK, it does not come back
