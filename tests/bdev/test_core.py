"""The bdev layer core through its Python API: names, claims, descriptors, removal, stats."""

from __future__ import annotations

import asyncio
import errno
import uuid as uuidlib
from typing import Any

import pytest

from pybdev.bdev.core import Bdev, BdevEvent, BdevLayer, BdevState, Descriptor
from pybdev.bdev.malloc import MallocModule
from pybdev.bdev.qd_sampling import QdSampler
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
    b.stat.reset("all")  # the lvol module's examine read the bdev
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


async def test_observers_hear_register_resize_and_unregister(layer: BdevLayer) -> None:
    heard: list[tuple[str, str]] = []
    layer.observers.append(lambda event, name: heard.append((event, name)))
    layer.observers.append(lambda event, name: 1 / 0)  # a failing observer is logged only
    bdev = malloc(layer, "Obs0")
    desc = layer.open("Obs0", write=False)
    layer.resize(bdev, 128)
    assert heard == [("bdev_register", "Obs0"), ("bdev_resize", "Obs0")]
    deleting = asyncio.ensure_future(layer.unregister(bdev))
    await asyncio.sleep(0)
    assert heard[-1] == ("bdev_resize", "Obs0")  # not gone while a descriptor is open
    desc.close()
    await deleting
    assert heard[-1] == ("bdev_unregister", "Obs0")


# -- I/O semantics the layer owns: FUA, splitting, write-zeroes, -ENOMEM, declarations ----

class Recorder(Bdev):
    """A RAM bdev that logs every request the layer hands it.

    ``defer``: complete on the next loop iteration instead of inside the call.
    ``nomem``: answer this many requests with -ENOMEM first (no effect, as SPDK means it).
    """

    def __init__(self, name: str = "R", size: int = 1 << 20, *, io_types: set[str] | None = None,
                 fua_native: bool = False, max_io_bytes: int = 0, defer: bool = False,
                 nomem: int = 0, fail_at: int | None = None) -> None:
        super().__init__(name, 512, size // 512, max_io_bytes=max_io_bytes,
                         io_types=frozenset(io_types or {"read", "write", "flush", "unmap"}))
        self.fua_native = fua_native
        self.memory = bytearray(size)
        self.log: list[tuple[Any, ...]] = []
        self.defer = defer
        self.nomem = nomem
        self.fail_at = fail_at

    def _done(self, cb: Any, status: int, data: Any = None) -> None:
        if self.defer:
            asyncio.get_running_loop().call_soon(cb, status, data)
        else:
            cb(status, data)

    def _refused(self, cb: Any, offset: int) -> bool:
        if self.nomem:
            self.nomem -= 1
            self._done(cb, -errno.ENOMEM)
            return True
        if self.fail_at == offset:
            self._done(cb, -errno.EIO)
            return True
        return False

    def submit_read(self, offset: int, length: int, cb: Any) -> None:
        self.log.append(("read", offset, length))
        if not self._refused(cb, offset):
            self._done(cb, 0, bytes(self.memory[offset:offset + length]))

    def submit_write(self, offset: int, data: Any, cb: Any, fua: bool) -> None:
        self.log.append(("write", offset, len(data), bool(fua)))
        if not self._refused(cb, offset):
            self.memory[offset:offset + len(data)] = data
            self._done(cb, 0)

    def submit_unmap(self, offset: int, length: int, cb: Any) -> None:
        self.log.append(("unmap", offset, length))
        if not self._refused(cb, offset):
            self.memory[offset:offset + length] = bytes(length)
            self._done(cb, 0)

    def submit_flush(self, offset: int, length: int, cb: Any) -> None:
        self.log.append(("flush", offset, length))
        if not self._refused(cb, offset):
            self._done(cb, 0)


def recorder(layer: BdevLayer, **kw: Any) -> tuple[Recorder, Descriptor]:
    b = Recorder(**kw)
    # No examine: the lvol module's would read the first blocks, and the log is to hold
    # this test's requests only.
    layer.options["bdev_auto_examine"] = False
    layer.register(b)
    return b, layer.open(b.name, write=True)


async def test_fua_is_emulated_once_by_the_layer(layer: BdevLayer) -> None:
    b, desc = recorder(layer)
    await desc.write_async(4096, b"\x11" * 1024, fua=True)
    assert b.log == [("write", 4096, 1024, False), ("flush", 4096, 1024)]
    b.log.clear()
    await desc.write_async(4096, b"\x11" * 1024)  # no FUA: no flush
    assert b.log == [("write", 4096, 1024, False)]
    b.log.clear()
    # Every write-type operation takes FUA; write-zeroes here is emulated with writes.
    await desc.unmap_async(0, 512, fua=True)
    await desc.write_zeroes_async(512, 1024, fua=True)
    assert b.log == [("unmap", 0, 512), ("flush", 0, 512),
                     ("write", 512, 1024, False), ("flush", 512, 1024)]
    assert b.stat.to_json("R")["num_write_ops"] == 3  # a FUA write counts once
    desc.close()


async def test_fua_goes_to_modules_that_have_it_and_nowhere_without_a_cache(
        layer: BdevLayer) -> None:
    native, desc = recorder(layer, fua_native=True)
    await desc.write_async(0, bytes(512), fua=True)
    assert native.log == [("write", 0, 512, True)]
    desc.close()
    # No flush to do (no volatile cache): a completed write is already durable.
    plain, desc = recorder(layer, name="N", io_types={"read", "write"})
    await desc.write_async(0, bytes(512), fua=True)
    assert plain.log == [("write", 0, 512, False)]
    desc.close()


async def test_fua_write_fails_when_its_flush_fails(layer: BdevLayer) -> None:
    b, desc = recorder(layer, fail_at=8192)
    assert status(lambda cb: desc.write(8192, bytes(512), cb, True)) == -errno.EIO
    assert b.log == [("write", 8192, 512, False)]  # the failed write is not flushed
    desc.close()


@pytest.mark.parametrize("defer", [False, True])
async def test_requests_above_max_io_bytes_are_split_and_joined(layer: BdevLayer,
                                                                defer: bool) -> None:
    b, desc = recorder(layer, max_io_bytes=8192, defer=defer)
    pattern = bytes((i * 13) & 0xFF for i in range(65536))
    done: list[tuple[int, Any]] = []
    desc.write(4096, pattern, lambda s, d: done.append((s, d)))
    await asyncio.sleep(0.01)
    assert done == [(0, None)]  # one completion for the whole request
    assert [e[2] for e in b.log] == [8192] * 8 and b.log[0][1] == 4096
    assert await desc.read_async(4096, 65536) == pattern  # joined in order
    assert all(e[2] <= 8192 for e in b.log)
    await desc.unmap_async(0, 20480)
    assert [e for e in b.log if e[0] == "unmap"] == [("unmap", 0, 8192), ("unmap", 8192, 8192),
                                                    ("unmap", 16384, 4096)]
    st = b.stat.to_json("R")
    assert (st["num_write_ops"], st["bytes_written"]) == (1, 65536)
    assert (st["num_read_ops"], st["num_unmap_ops"]) == (1, 1)
    desc.close()


async def test_split_request_reports_the_first_error_once(layer: BdevLayer) -> None:
    b, desc = recorder(layer, max_io_bytes=4096, fail_at=8192, defer=True)
    done: list[int] = []
    desc.read(0, 16384, lambda s, d: done.append(s) if d is None else done.append(99))
    await asyncio.sleep(0.01)
    assert done == [-errno.EIO]
    assert b.stat.to_json("R")["io_error"] == {"failed": 1}
    desc.close()


class SyncZeroless(Bdev):
    """4 GiB, synchronous, writes discarded, no native write-zeroes (the layer emulates)."""

    def __init__(self) -> None:
        super().__init__("Z", 4096, (4 << 30) // 4096, io_types=frozenset(("read", "write")))
        self.bytes_written = 0

    def submit_write(self, offset: int, data: Any, cb: Any, fua: bool) -> None:
        self.bytes_written += len(data)
        cb(0, None)


async def test_write_zeroes_emulation_is_a_loop_not_a_recursion(layer: BdevLayer) -> None:
    """4 GiB of emulated write-zeroes completing inline: 4096 pieces, a flat stack."""
    b = SyncZeroless()
    layer.register(b)
    desc = layer.open("Z", write=True)
    assert "write_zeroes" not in b.io_types
    assert status(lambda cb: desc.write_zeroes(0, 4 << 30, cb)) == 0
    assert b.bytes_written == 4 << 30
    assert b.stat.to_json("Z")["num_write_ops"] == 1
    desc.close()


async def test_write_zeroes_emulation_resumes_from_late_completions(layer: BdevLayer) -> None:
    b, desc = recorder(layer, size=8 << 20, io_types={"read", "write"}, defer=True)
    b.memory[:] = b"\xff" * len(b.memory)
    await desc.write_zeroes_async(512, (3 << 20) + 1024)
    assert [e[2] for e in b.log] == [1 << 20] * 3 + [1024]
    assert b.memory[512:512 + (3 << 20) + 1024] == bytes((3 << 20) + 1024)
    assert b.memory[:512] == b"\xff" * 512
    desc.close()


@pytest.mark.parametrize("defer", [False, True])
async def test_enomem_is_retried_by_the_layer(layer: BdevLayer, defer: bool) -> None:
    b, desc = recorder(layer, nomem=3, defer=defer)
    await desc.write_async(1024, b"\x77" * 512)  # no -ENOMEM reaches the consumer
    assert b.memory[1024:1536] == b"\x77" * 512
    assert b.log == [("write", 1024, 512, False)] * 4
    b.nomem = 2
    assert await desc.read_async(1024, 512) == b"\x77" * 512
    st = b.stat.to_json("R")
    assert st["io_error"] == {"nomem": 5}
    assert (st["num_write_ops"], st["num_read_ops"]) == (1, 1)
    desc.close()


async def test_enomem_gives_up_after_the_bound(layer: BdevLayer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from pybdev.bdev import core
    monkeypatch.setattr(core, "NOMEM_GIVE_UP_NS", 50_000_000)
    b, desc = recorder(layer, nomem=1 << 30)
    with pytest.raises(OperationError) as e:
        await asyncio.wait_for(desc.write_async(0, bytes(512)), 10)
    assert e.value.errno == errno.ENOMEM
    assert len(b.log) > 2  # retried until the bound, then handed to the consumer
    desc.close()


async def test_enomem_pieces_of_a_split_request_are_retried(layer: BdevLayer) -> None:
    b, desc = recorder(layer, max_io_bytes=4096, nomem=2)
    pattern = bytes(range(256)) * 64
    await desc.write_async(0, pattern)
    assert b.memory[:len(pattern)] == pattern
    assert b.stat.to_json("R")["io_error"] == {"nomem": 2}
    desc.close()


async def test_block_status_and_read_buffer_are_declared(layer: BdevLayer) -> None:
    from pybdev.bdev.core import ReadBuffer

    m = malloc(layer)
    assert m.read_buffer is ReadBuffer.HELD and Bdev.read_buffer is ReadBuffer.CALLBACK
    desc = layer.open("M0", write=False)
    got: list[Any] = []
    desc.block_status(512, 4096, lambda s, e: got.append((s, e)))
    assert got == [(0, [(4096, 0)])]  # no hole tracking: all allocated data
    got.clear()
    desc.block_status(512, 1 << 30, lambda s, e: got.append((s, e)))
    assert got == [(-errno.EINVAL, None)]
    desc.close()

    class Holey(Recorder):
        reports_holes = True

        def get_block_status(self, offset: int, length: int, cb: Any) -> None:
            cb(0, [(4096, 3), (length - 4096, 0)])

    layer.register(Holey(name="H"))
    desc = layer.open("H", write=False)
    got.clear()
    desc.block_status(0, 8192, lambda s, e: got.append((s, e)))
    assert got == [(0, [(4096, 3), (4096, 0)])]
    desc.close()


class HeldBdev(Bdev):
    """A fake module that completes only when the test says so (requests held in flight)."""

    def __init__(self) -> None:
        super().__init__("Held0", 512, 64)
        self.held: list[Any] = []

    def submit_read(self, offset: int, length: int, cb: Any) -> None:
        self.held.append(cb)


async def test_queue_depth_sampling_counts_requests_in_the_module(layer: BdevLayer) -> None:
    bdev = HeldBdev()
    layer.register(bdev)
    desc = layer.open("Held0", write=False)
    desc.read(0, 512, lambda s, d: None)  # before sampling: never counted, never uncounted
    now = [0]
    bdev.qd_sampler = QdSampler(lambda: bdev.inflight, 100, clock=lambda: now[0])
    bdev.update_hooks()
    for _ in range(3):
        desc.read(0, 512, lambda s, d: None)
    assert bdev.inflight == 3
    now[0] = 250_000  # 2.5 periods of 100 us
    bdev.qd_sampler.sample()
    assert bdev.qd_sampler.to_json() == {"queue_depth_polling_period": 100, "queue_depth": 3,
                                         "io_time": 200, "weighted_io_time": 600}
    for cb in bdev.held:
        cb(0, bytes(512))
    assert bdev.inflight == 0
    now[0] = 300_000  # the half period left over, and one more
    bdev.qd_sampler.sample()
    assert bdev.qd_sampler.to_json()["queue_depth"] == 0
    assert bdev.qd_sampler.to_json()["io_time"] == 200
    desc.close()
