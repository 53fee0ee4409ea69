"""The NVMe/TCP initiator against scripted controllers that misbehave: silence, garbage,
lies in PDU headers, floods.  Each attach must fail with a clear error, within its
deadline, holding no more than one PDU's worth of bytes.

The controllers are asyncio servers in the test's own loop (a fake by necessity: no
real target sends these bytes on purpose).
"""

from __future__ import annotations

import asyncio
import errno
import struct
from collections.abc import Awaitable, Callable

import pytest

import pybdev.bdev.nvme_ctrlr as nvme_ctrlr
from pybdev.bdev.core import BdevLayer
from pybdev.bdev.nvme import AttachParams, NvmeModule
from pybdev.errors import OperationError
from pybdev.proto import nvme

from .conftest import module

pytestmark = pytest.mark.timeout(60)

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(autouse=True)
def short_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvme_ctrlr, "CONNECT_TIMEOUT", 1.0)


async def attach(layer: BdevLayer, script: Script) -> OperationError:
    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await script(r, w)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(OperationError) as e:
            await module(layer, NvmeModule).attach(AttachParams(
                name="H", trtype="tcp", traddr="127.0.0.1", adrfam="ipv4",
                trsvcid=str(port), subnqn="nqn.2016-06.io.spdk:h"))
        return e.value
    finally:
        server.close()


async def ic(r: asyncio.StreamReader, w: asyncio.StreamWriter, **kw: object) -> None:
    await r.readexactly(128)
    w.write(nvme.encode_ic_resp(131072, **kw))  # type: ignore[arg-type]


async def test_silent_controller_times_out(layer: BdevLayer) -> None:
    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(1 << 16)
        await asyncio.sleep(5)

    e = await attach(layer, silent)
    assert e.errno == errno.EIO and "ICResp timed out" in e.message, e.message


async def test_garbage_is_refused(layer: BdevLayer) -> None:
    async def garbage(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readexactly(128)
        w.write(b"\x42" * 64)
        await asyncio.sleep(5)

    e = await attach(layer, garbage)
    assert e.errno == errno.EIO and "unexpected PDU type 0x42" in e.message, e.message


async def test_digest_not_granted_is_refused(layer: BdevLayer) -> None:
    async def lies(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await ic(r, w, hdgst=True)
        await asyncio.sleep(5)

    e = await attach(layer, lies)
    assert "digests granted" in e.message, e.message


async def test_huge_plen_is_refused_before_buffering(layer: BdevLayer) -> None:
    async def flood(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await ic(r, w)
        await r.read(1 << 16)  # the Connect
        # a C2HData that claims 1 GiB of data, then a flood of bytes
        w.write(struct.pack("<BBBBIHHIII", nvme.PDU_C2H_DATA, 0x04, 24, 24, 24 + (1 << 30),
                            0, 0, 0, 1 << 30, 0))
        for _ in range(64):
            w.write(bytes(1 << 16))
            await w.drain()

    e = await attach(layer, flood)
    assert "limit" in e.message or "not a read" in e.message, e.message


async def test_completion_for_unknown_command(layer: BdevLayer) -> None:
    async def stray(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await ic(r, w)
        await r.read(1 << 16)
        w.write(nvme.Framer().capsule_resp(nvme.encode_cqe(cid=999)))
        await asyncio.sleep(5)

    e = await attach(layer, stray)
    assert "CID 999, which is not in flight" in e.message, e.message


async def test_connect_unanswered_times_out(layer: BdevLayer) -> None:
    async def mute(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await ic(r, w)
        await asyncio.sleep(5)

    e = await attach(layer, mute)
    assert "Connect (queue 0)" in e.message and "no answer" in e.message, e.message


async def test_connect_refused_with_status(layer: BdevLayer) -> None:
    async def refuse(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await ic(r, w)
        data = await r.readexactly(72 + 1024)
        cid = struct.unpack_from("<H", data, 10)[0]
        w.write(nvme.Framer().capsule_resp(nvme.encode_cqe(
            cid, nvme.status(1, 0x84, True))))
        await asyncio.sleep(5)

    e = await attach(layer, refuse)
    assert e.errno == errno.EIO and "refused" in e.message and "CONNECT_INVALID_HOST" \
        in e.message, e.message
    assert module(layer, NvmeModule).controllers == {}
