"""The bdev layer core through its Python API: names, claims, descriptors, removal, stats."""

from __future__ import annotations

import asyncio
import errno
import uuid as uuidlib
from typing import Any

import pytest

from pybdev.bdev.core import Bdev, BdevEvent, BdevLayer, BdevState, Descriptor
from pybdev.bdev.malloc import MallocModule
from pybdev.errors import OperationError

from .conftest import complete, module, status


def malloc(layer: BdevLayer, name: str = "M0", bs: int = 512, blocks: int = 64,
           uuid: str | None = None) -> Bdev:
    return module(layer, MallocModule).create(name=name, block_size=bs, num_blocks=blocks,
                                              uuid=uuid)


async def test_names_and_uuid_aliases_share_one_namespace(layer: BdevLayer) -> None:
    u = str(uuidlib.uuid4())
    b = malloc(layer, "M0", uuid=u.upper())
    assert b.uuid == u and b.aliases == [u]
    assert layer.get(u) is b and layer.get("M0") is b
    with pytest.raises(OperationError) as e:
        malloc(layer, "M0")
    assert e.value.errno == errno.EEXIST
    with pytest.raises(OperationError) as e:
        malloc(layer, "M1", uuid=u)
    assert e.value.errno == errno.EEXIST
    with pytest.raises(OperationError) as e:
        malloc(layer, u)  # a name equal to another bdev's UUID alias
    assert e.value.errno == errno.EEXIST
    assert [x.name for x in layer] == ["M0"]


async def test_open_unknown_and_claims(layer: BdevLayer) -> None:
    with pytest.raises(OperationError) as e:
        layer.open("nope", write=False)
    assert e.value.errno == errno.ENODEV
    b = malloc(layer)
    owner = layer.open("M0", write=True)
    layer.claim(owner, "test")
    with pytest.raises(OperationError) as e:
        layer.open("M0", write=True)
    assert e.value.errno == errno.EPERM
    reader = layer.open(b.uuid, write=False)  # read-only opens of a claimed bdev work
    with pytest.raises(OperationError) as e:
        layer.claim(reader, "other")
    assert e.value.errno == errno.EPERM
    assert b.info()["claimed"] is True and b.info()["claim_type"] == "exclusive_write"
    layer.release_claim(b)
    reader.close()
    owner.close()
    assert "claim_type" not in b.info()


@pytest.mark.parametrize(("offset", "length", "expected"), [
    (0, 512, 0), (512 * 63, 512, 0), (0, 512 * 64, 0),
    (1, 512, -errno.EINVAL), (0, 511, -errno.EINVAL), (0, 0, -errno.EINVAL),
    (-512, 512, -errno.EINVAL), (512 * 64, 512, -errno.EINVAL), (512 * 63, 1024, -errno.EINVAL),
])
async def test_requests_are_checked_at_the_boundary(layer: BdevLayer, offset: int, length: int,
                                                    expected: int) -> None:
    malloc(layer)
    desc = layer.open("M0", write=True)
    assert status(lambda cb: desc.read(offset, length, cb)) == expected
    assert status(lambda cb: desc.write(offset, bytes(max(length, 0)), cb)) == expected
    assert status(lambda cb: desc.unmap(offset, length, cb)) == expected
    assert status(lambda cb: desc.write_zeroes(offset, length, cb)) == expected
    # The fast path of read/write and the full check agree.
    assert desc._check(offset, length, "read", False) == expected
    desc.close()


async def test_write_needs_a_write_descriptor_and_closed_is_enodev(layer: BdevLayer) -> None:
    malloc(layer)
    desc = layer.open("M0", write=False)
    assert status(lambda cb: desc.write(0, bytes(512), cb)) == -errno.EBADF
    assert status(lambda cb: desc.unmap(0, 512, cb)) == -errno.EBADF
    assert status(lambda cb: desc.read(0, 512, cb)) == 0
    desc.close()
    assert status(lambda cb: desc.read(0, 512, cb)) == -errno.ENODEV
    assert status(lambda cb: desc.write(0, bytes(512), cb)) == -errno.ENODEV
    assert status(desc.reset) == -errno.ENODEV


class WriteOnly(Bdev):
    """Reads and writes, no write_zeroes: the layer emulates it with writes."""

    module_name = "test"

    def __init__(self) -> None:
        super().__init__("W", 512, 8192, io_types=frozenset(("read", "write")))
        self.memory = bytearray(b"\xff" * self.size)
        self.writes = 0

    def submit_read(self, offset: int, length: int, cb: Any) -> None:
        cb(0, bytes(self.memory[offset:offset + length]))

    def submit_write(self, offset: int, data: Any, cb: Any, fua: bool) -> None:
        self.memory[offset:offset + len(data)] = data
        self.writes += 1
        cb(0, None)


async def test_write_zeroes_is_emulated_and_unsupported_types_refused(layer: BdevLayer) -> None:
    b = WriteOnly()
    layer.register(b)
    desc = layer.open("W", write=True)
    assert b.info()["supported_io_types"]["write_zeroes"] is True
    assert status(lambda cb: desc.unmap(0, 512, cb)) == -errno.ENOTSUP
    assert status(lambda cb: desc.flush(0, 512, cb)) == -errno.ENOTSUP
    length = 3 * 1024 * 1024  # more than one 1 MiB chunk
    assert status(lambda cb: desc.write_zeroes(512, length, cb)) == 0
    assert b.writes == 3
    assert b.memory[512:512 + length] == bytes(length)
    assert b.memory[:512] == b"\xff" * 512 and b.memory[512 + length] == 0xFF
    desc.close()


async def test_unregister_sends_remove_and_waits_for_the_last_close(layer: BdevLayer) -> None:
    b = malloc(layer)
    events: list[tuple[BdevEvent, str]] = []
    holder: list[Descriptor] = []

    def on_event(event: BdevEvent, bdev: Bdev) -> None:
        events.append((event, bdev.name))
        asyncio.get_running_loop().call_later(0.05, holder[0].close)

    holder.append(layer.open("M0", write=True, event_cb=on_event))
    silent = layer.open("M0", write=False)  # no callback: closes on its own below
    task = asyncio.ensure_future(layer.unregister(b))
    await asyncio.sleep(0.01)
    assert b.state is BdevState.UNREGISTERING and not task.done()
    with pytest.raises(OperationError) as e:
        layer.open("M0", write=False)
    assert e.value.errno == errno.ENODEV
    assert status(lambda cb: silent.read(0, 512, cb)) == -errno.ENODEV
    await asyncio.sleep(0.1)
    assert events == [(BdevEvent.REMOVE, "M0")] and not task.done()
    silent.close()
    await asyncio.wait_for(task, 5)
    assert b.state is BdevState.GONE and layer.get("M0") is None and layer.get(b.uuid) is None
    malloc(layer, "M0", uuid=b.uuid)  # name and UUID are free again


async def test_unregister_by_name_checks_module(layer: BdevLayer) -> None:
    malloc(layer)
    for name, module_name in (("M0", "null"), ("nope", "malloc")):
        with pytest.raises(OperationError) as e:
            await layer.unregister_by_name(name, module_name)
        assert e.value.errno == errno.ENODEV
    await layer.unregister_by_name("M0", "malloc")
    assert list(layer) == []


async def test_resize_notifies_descriptors(layer: BdevLayer) -> None:
    b = malloc(layer)
    seen: list[BdevEvent] = []
    desc = layer.open("M0", write=False, event_cb=lambda ev, _b: seen.append(ev))
    layer.resize(b, 32)
    await asyncio.sleep(0)
    assert seen == [BdevEvent.RESIZE] and b.num_blocks == 32
    assert status(lambda cb: desc.read(512 * 32, 512, cb)) == -errno.EINVAL
    desc.close()


async def test_iostat_counts_bytes_ops_latency_and_errors(layer: BdevLayer) -> None:
    b = malloc(layer)
    desc = layer.open("M0", write=True)
    for _ in range(3):
        assert status(lambda cb: desc.write(0, bytes(1024), cb)) == 0
    assert status(lambda cb: desc.read(0, 2048, cb)) == 0
    assert status(lambda cb: desc.unmap(0, 512, cb)) == 0
    assert status(lambda cb: desc.write_zeroes(0, 512, cb)) == 0
    st = b.stat.to_json("M0")
    assert (st["bytes_written"], st["num_write_ops"]) == (3 * 1024 + 512, 4)
    assert (st["bytes_read"], st["num_read_ops"]) == (2048, 1)
    assert (st["bytes_unmapped"], st["num_unmap_ops"]) == (512, 1)
    assert st["min_read_latency_ticks"] <= st["max_read_latency_ticks"]
    assert st["read_latency_ticks"] >= st["max_read_latency_ticks"]
    assert st["io_error"] == {}
    b.stat.reset("all")
    assert b.stat.to_json("M0")["num_write_ops"] == 0
    desc.close()


async def test_async_helpers(layer: BdevLayer) -> None:
    malloc(layer)
    desc = layer.open("M0", write=True)
    await desc.write_async(512, b"\x5a" * 512)
    assert await desc.read_async(512, 512) == b"\x5a" * 512
    await desc.flush_async()
    await desc.reset_async()
    with pytest.raises(OperationError) as e:
        await desc.read_async(1, 512)
    assert e.value.errno == errno.EINVAL
    desc.close()


async def test_read_data_is_the_bytes_written(layer: BdevLayer) -> None:
    malloc(layer, bs=4096, blocks=16)
    desc = layer.open("M0", write=True)
    pattern = bytes(range(256)) * 16
    assert complete(lambda cb: desc.write(4096, pattern, cb)) == (0, None)
    assert complete(lambda cb: desc.read(4096, 4096, cb)) == (0, pattern)
    desc.close()


async def test_every_module_refuses_out_of_range_and_misaligned(layer: BdevLayer,
                                                               tmp_path: Any) -> None:
    from pybdev.bdev.aio import AioModule
    from pybdev.bdev.error import ErrorModule
    from pybdev.bdev.null import NullModule
    from pybdev.bdev.passthru import PassthruModule

    img = tmp_path / "disk.img"
    img.write_bytes(bytes(64 * 4096))
    module(layer, MallocModule).create(name="M", block_size=4096, num_blocks=64)
    module(layer, MallocModule).create(name="M2", block_size=4096, num_blocks=64)
    module(layer, MallocModule).create(name="M0", block_size=4096, num_blocks=64)
    module(layer, NullModule).create(name="N", block_size=4096, num_blocks=64)
    await module(layer, AioModule).create(name="A", filename=str(img), block_size=4096,
                                          fallocate=True)
    module(layer, PassthruModule).create(base_bdev_name="M", name="PT")
    module(layer, ErrorModule).create("M2")
    end = 64 * 4096
    for name in ("M0", "N", "A", "PT", "EE_M2"):
        desc = layer.open(name, write=True)
        for offset, length in ((end, 4096), (end - 4096, 8192), (512, 4096), (0, 1000),
                               (0, 0), (-4096, 4096)):
            for op in (desc.read_async(offset, length),
                       desc.write_async(offset, bytes(max(length, 0))),
                       desc.write_zeroes_async(offset, length)):
                with pytest.raises(OperationError) as e:
                    await op
                assert e.value.errno == errno.EINVAL, (name, offset, length)
        await desc.write_async(end - 4096, b"\x01" * 4096)
        assert await desc.read_async(end - 4096, 4096) == (
            bytes(4096) if name == "N" else b"\x01" * 4096)
        desc.close()
