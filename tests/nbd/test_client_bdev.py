"""The NBD client bdev against nbdkit, qemu-nbd and pybdev's own export.

Most tests run the bdev layer in the test process and compare data through the bdev API
(``Descriptor``); one runs two pybdev processes, one the client of the other.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from pybdev.bdev.core import BdevEvent, BdevLayer
from pybdev.bdev.nbd import NbdBdev, NbdModule
from pybdev.errors import OperationError
from pybdev.proto import nbd
from tests.conftest import Target, wait_until

from .conftest import Peer, need, run, unix_uri
from .rawclient import RawClient

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def layer() -> AsyncIterator[BdevLayer]:
    layer = BdevLayer()
    layer.add_module(NbdModule(layer))
    yield layer
    await asyncio.wait_for(layer.shutdown(), 30)


async def create(layer: BdevLayer, uri: str, name: str = "Nbd0") -> NbdBdev:
    return await layer.module(NbdModule).create(name, uri)


async def exercise(layer: BdevLayer, bdev: NbdBdev) -> None:
    """Writes of several sizes, pipelined, read back and compared through the bdev API."""
    desc = layer.open(bdev.name, write=True)
    try:
        bs = bdev.block_size
        blobs = [(i * 3 * 65536, os.urandom(n))
                 for i, n in enumerate([bs, 4096, 65536, 3 * 65536 - bs, 131072, 8192])]
        await asyncio.gather(*[desc.write_async(off, data) for off, data in blobs])
        got = await asyncio.gather(*[desc.read_async(off, len(data)) for off, data in blobs])
        assert [g == d for g, (_, d) in zip(got, blobs, strict=True)] == [True] * len(blobs)
        big = os.urandom(3 * 1024 * 1024)
        await desc.write_async(4 * 1024 * 1024, big, fua=True)
        assert await desc.read_async(4 * 1024 * 1024, len(big)) == big
        if bdev.supports("flush"):
            await desc.flush_async()
        await desc.write_zeroes_async(4 * 1024 * 1024, 65536)
        assert await desc.read_async(4 * 1024 * 1024, 65536) == bytes(65536)
        if bdev.supports("unmap"):
            await desc.unmap_async(4 * 1024 * 1024 + 65536, 65536)
    finally:
        desc.close()


def block_status(bdev: NbdBdev, offset: int, length: int) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    bdev.get_block_status(offset, length,
                          lambda status, ext: fut.set_result((status, ext)))
    return fut


@need("nbdkit")
async def test_against_nbdkit_memory(layer: BdevLayer, peers: Callable[..., Peer]) -> None:
    peer = peers("nbdkit", "memory", "16M")
    bdev = await create(layer, unix_uri("", peer.sock))
    assert (bdev.block_size, bdev.num_blocks) == (512, 32768)
    assert {"read", "write", "flush", "unmap", "write_zeroes"} <= bdev.io_types
    assert bdev.client.info is not None and bdev.client.info.structured_replies
    await exercise(layer, bdev)
    # Allocation comes from the server: the start is data, far away is a hole.
    status, extents = await block_status(bdev, 12 * 1024 * 1024, 1024 * 1024)
    assert status == 0
    assert extents[0][1] & nbd.NBD_STATE_HOLE
    assert bdev.info()["driver_specific"] == {"nbd": {"uri": unix_uri("", peer.sock)}}
    assert bdev.write_config() == [{"method": "bdev_nbd_create",
                                    "params": {"name": "Nbd0",
                                               "uri": unix_uri("", peer.sock)}}]


@need("qemu-nbd")
async def test_against_qemu_nbd_and_clean_disconnect(layer: BdevLayer, tmp_path: Path,
                                                     peers: Callable[..., Peer]) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(bytes(16 * 1024 * 1024))
    # Without --persistent qemu-nbd exits once its client said goodbye.
    peer = peers("qemu-nbd", "-f", "raw", "--cache=writeback", str(image), name="disk")
    bdev = await create(layer, f"nbd:unix:{peer.sock}:exportname=disk")
    await exercise(layer, bdev)
    desc = layer.open("Nbd0", write=True)
    await desc.write_async(0, b"\x77" * 4096)
    await desc.flush_async()
    desc.close()
    await layer.unregister(bdev)
    await asyncio.get_running_loop().run_in_executor(None, peer.proc.wait, 10)
    assert peer.proc.returncode == 0
    assert image.read_bytes()[:4096] == b"\x77" * 4096


async def test_against_pybdev_export(layer: BdevLayer, exported: tuple[Target, str]) -> None:
    _target, uri = exported
    bdev = await create(layer, uri)
    assert bdev.block_size == 512 and bdev.num_blocks == 32768
    assert {"read", "write", "flush", "unmap", "write_zeroes"} <= bdev.io_types
    await exercise(layer, bdev)
    desc = layer.open("Nbd0", write=True)
    await desc.write_async(65536, b"\x42" * 8192)
    desc.close()
    raw = RawClient(uri.split("socket=")[1], "Malloc0")
    assert raw.read(65536, 8192) == b"\x42" * 8192
    raw.disconnect()


async def test_only_offered_commands(layer: BdevLayer, start_target: Callable[..., Target],
                                     sockdir: Path) -> None:
    t = start_target()
    t.rpc("bdev_null_create", {"name": "Null0", "num_blocks": 8192, "block_size": 4096})
    uri = t.rpc("nbd_start_disk", {"bdev_name": "Null0",
                                   "nbd_device": unix_uri("Null0", sockdir / "n.sock")})
    bdev = await create(layer, uri)
    assert bdev.block_size == 4096
    assert "flush" not in bdev.io_types and "unmap" not in bdev.io_types
    desc = layer.open("Nbd0", write=True)
    with pytest.raises(OperationError) as info:
        await desc.unmap_async(0, 4096)
    assert info.value.errno == errno.ENOTSUP
    desc.close()


async def test_large_requests_are_split(layer: BdevLayer, exported: tuple[Target, str]) -> None:
    _, uri = exported
    bdev = await create(layer, uri)
    bdev.max_request = 65536  # as if the server advertised a 64 KiB maximum
    sizes: list[int] = []
    original = bdev.client.request

    def spy(typ: int, offset: int, length: int, *args: Any, **kwargs: Any) -> None:
        sizes.append(length)
        original(typ, offset, length, *args, **kwargs)

    bdev.client.request = spy  # type: ignore[method-assign]
    desc = layer.open("Nbd0", write=True)
    data = os.urandom(1024 * 1024 + 4096)
    await desc.write_async(8192, data)
    assert await desc.read_async(8192, len(data)) == data
    desc.close()
    assert max(sizes) == 65536 and len(sizes) == 2 * 17


@need("nbdkit")
async def test_fua_reaches_the_server(layer: BdevLayer, peers: Callable[..., Peer],
                                      tmp_path: Path) -> None:
    log = tmp_path / "nbdkit.log"
    peer = peers("nbdkit", "--filter=log", "memory", "4M", f"logfile={log}")
    bdev = await create(layer, unix_uri("", peer.sock))
    desc = layer.open("Nbd0", write=True)
    await desc.write_async(0, bytes(4096), fua=True)
    await desc.write_async(4096, bytes(4096))
    desc.close()
    await layer.unregister(bdev)
    writes = [line for line in log.read_text().splitlines() if " Write " in line]
    assert any("fua=1" in w for w in writes) and any("fua=0" in w for w in writes), writes


@need("nbdkit")
async def test_server_errors_become_io_errors(layer: BdevLayer,
                                              peers: Callable[..., Peer]) -> None:
    peer = peers("nbdkit", "--filter=error", "memory", "4M", "error-pread=EIO",
                 "error-pread-rate=100%")
    await create(layer, unix_uri("", peer.sock))
    desc = layer.open("Nbd0", write=True)
    with pytest.raises(OperationError) as info:
        await desc.read_async(0, 4096)
    assert info.value.errno == errno.EIO
    await desc.write_async(0, bytes(4096))  # the connection is still fine
    desc.close()


@need("nbdkit")
async def test_server_loss_fails_io_and_removes_the_bdev(layer: BdevLayer,
                                                         peers: Callable[..., Peer]) -> None:
    peer = peers("nbdkit", "--filter=delay", "memory", "4M", "rdelay=30")
    await create(layer, unix_uri("", peer.sock))
    events: list[BdevEvent] = []
    desc = layer.open("Nbd0", write=True, event_cb=lambda ev, _b: events.append(ev))
    pending = asyncio.ensure_future(desc.read_async(0, 4096))  # the server sits on it
    await asyncio.sleep(0.2)
    peer.proc.send_signal(signal.SIGKILL)
    with pytest.raises(OperationError) as info:
        await asyncio.wait_for(pending, 15)
    assert info.value.errno == errno.EIO
    for _ in range(200):
        if events:
            break
        await asyncio.sleep(0.05)
    assert events == [BdevEvent.REMOVE]
    with pytest.raises(OperationError):
        await desc.read_async(0, 4096)
    desc.close()
    for _ in range(200):
        if layer.get("Nbd0") is None:
            break
        await asyncio.sleep(0.05)
    assert layer.get("Nbd0") is None


async def test_create_errors(layer: BdevLayer, exported: tuple[Target, str],
                             sockdir: Path) -> None:
    _, uri = exported
    cases = [
        ("nbd://", errno.EINVAL),
        ("nbd+unix:///x", errno.EINVAL),
        (unix_uri("x", sockdir / "missing.sock"), errno.ENOENT),
        (uri.replace("Malloc0", "nope", 1), errno.ENOENT),
    ]
    for bad, code in cases:
        with pytest.raises(OperationError) as info:
            await create(layer, bad)
        assert info.value.errno == code, (bad, info.value)
    await create(layer, uri)
    with pytest.raises(OperationError) as info:
        await create(layer, uri)
    assert info.value.errno == errno.EEXIST


@need("qemu-io")
def test_two_pybdev_processes(start_target: Callable[..., Target], sockdir: Path) -> None:
    a = start_target()
    a.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 32768, "block_size": 512})
    uri_a = a.rpc("nbd_start_disk", {"bdev_name": "Malloc0",
                                     "nbd_device": unix_uri("Malloc0", sockdir / "a.sock")})
    b = start_target()
    assert b.rpc("bdev_nbd_create", {"name": "Nbd0", "uri": uri_a}) == "Nbd0"
    uri_b = b.rpc("nbd_start_disk", {"bdev_name": "Nbd0",
                                     "nbd_device": unix_uri("Nbd0", sockdir / "b.sock")})
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x3c 64k 1M", uri_b])
    out = run(["qemu-io", "-f", "raw", "-c", "read -P 0x3c 64k 1M", uri_a]).stdout
    assert "Pattern verification failed" not in out
    info = b.rpc("bdev_get_bdevs", {"name": "Nbd0"})[0]
    assert info["driver_specific"] == {"nbd": {"uri": uri_a}}
    assert info["num_blocks"] == 32768 and info["supported_io_types"]["unmap"] is True
    bdev_config = b.rpc("framework_get_config", {"name": "bdev"})
    assert {"method": "bdev_nbd_create", "params": {"name": "Nbd0", "uri": uri_a}} \
        in bdev_config
    # Server A dies: B's bdev is hot-removed, and B's export of it stops.
    a.stop(signal.SIGKILL)
    wait_until(lambda: b.rpc("bdev_get_bdevs") == [], what="Nbd0 hot-removed")
    wait_until(lambda: b.rpc("nbd_get_disks") == [], what="export of Nbd0 stopped")
    assert json.loads(b.cli("bdev_get_bdevs").stdout) == []


@need("nbdkit")
async def test_silent_server_is_a_lost_server(layer: BdevLayer,
                                              peers: Callable[..., Peer]) -> None:
    """A server that keeps the connection open but answers nothing does not hang I/O."""
    peer = peers("nbdkit", "--filter=delay", "memory", "4M", "rdelay=60")
    bdev = await create(layer, unix_uri("", peer.sock))
    bdev.client.request_timeout = 0.5
    events: list[BdevEvent] = []
    desc = layer.open("Nbd0", write=True, event_cb=lambda ev, _b: events.append(ev))
    with pytest.raises(OperationError) as info:
        await asyncio.wait_for(desc.read_async(0, 4096), 20)
    assert info.value.errno == errno.EIO
    for _ in range(200):
        if events:
            break
        await asyncio.sleep(0.05)
    assert events == [BdevEvent.REMOVE]
    desc.close()


@need("nbdkit")
async def test_delete_says_disc(layer: BdevLayer, peers: Callable[..., Peer]) -> None:
    peer = peers("nbdkit", "-v", "memory", "1M")
    bdev = await create(layer, unix_uri("", peer.sock))
    desc = layer.open("Nbd0", write=True)
    await desc.write_async(0, bytes(4096))
    desc.close()
    await layer.unregister(bdev)
    peer.stop()
    assert "client sent NBD_CMD_DISC" in peer.stderr
