"""GET /events: a real HTTP client follows bdevs, exports and connections as they come and go."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pybdev.events import EventHub, lost_marker
from pybdev.rpc.client import RpcClient
from tests.rpc.test_http import HttpTarget
from tests.test_metrics import qemu_io


def test_hub_memory_is_the_ring_and_a_slow_reader_learns_what_it_lost() -> None:
    hub = EventHub(capacity=8)
    for i in range(20):
        hub.publish("bdev_register", {"name": f"B{i}"})
    assert len(hub._ring) == 8  # bounded, however many events and subscribers
    lost, events = hub.since(0)
    assert lost == 12 and [e.id for e in events] == list(range(12, 20))
    assert hub.since(18)[0] == 0 and [e.data["name"] for e in hub.since(18)[1]] == ["B18", "B19"]
    assert hub.since(20) == (0, [])
    assert lost_marker(12) == b'event: lost\ndata: {"lost":12}\n\n'
    event = events[0]
    assert event.sse().startswith(b"id: 12\nevent: bdev_register\ndata: {\"id\":12,")


async def test_wait_wakes_on_publish_and_on_close() -> None:
    hub = EventHub()
    waiter = asyncio.ensure_future(hub.wait(0, 30))
    await asyncio.sleep(0)
    hub.publish("x", {})
    await asyncio.wait_for(waiter, 5)
    waiter = asyncio.ensure_future(hub.wait(1, 30))
    await asyncio.sleep(0)
    hub.close()
    await asyncio.wait_for(waiter, 5)
    await hub.wait(1, 0.01)  # closed: returns at once
    assert hub._waiters == []


class Stream:
    """A server-sent event reader over an aiohttp response."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, timeout: float = 30) -> tuple[str, dict[str, Any]]:
        fields: dict[str, str] = {}
        while True:
            line = (await asyncio.wait_for(self.response.content.readline(), timeout)).decode()
            if line == "":
                raise EOFError("the stream ended")
            line = line.rstrip("\n")
            if not line:
                if "data" in fields:
                    return fields.get("event", "message"), json.loads(fields["data"])
                continue
            if line.startswith(":"):
                continue
            key, _, val = line.partition(": ")
            fields[key] = val

    async def until(self, type_: str, **match: Any) -> dict[str, Any]:
        while True:
            kind, data = await self.next()
            if kind == type_ and all(data.get(k) == v for k, v in match.items()):
                return data


@pytest.fixture
async def target(tmp_path: Path) -> AsyncIterator[HttpTarget]:
    t = HttpTarget(tmp_path, "--http", "127.0.0.1:0")
    yield t
    t.stop()


async def follow(session: aiohttp.ClientSession, url: str,
                 **headers: str) -> tuple[aiohttp.ClientResponse, Stream]:
    response = await session.get(url, headers=headers)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    await response.content.readline()  # the opening comment: subscribed from here
    return response, Stream(response)


@pytest.mark.skipif(shutil.which("nbdkit") is None, reason="needs nbdkit as the NBD server "
                    "that goes away")
async def test_stream_sees_bdevs_exports_and_connections(target: HttpTarget,
                                                         tmp_path: Path) -> None:
    rpc = RpcClient(str(target.sock))
    nbdkit_sock = tmp_path / "nbdkit.sock"
    nbdkit = subprocess.Popen(["nbdkit", "-f", "-U", str(nbdkit_sock), "memory", "1M"])
    try:
        async with aiohttp.ClientSession() as s:
            response, stream = await follow(s, target.url + "/events")
            with rpc:
                rpc.call("bdev_malloc_create", {"name": "M0", "num_blocks": 256,
                                                "block_size": 512})
                assert await stream.until("bdev_register", name="M0")
                rpc.call("bdev_passthru_create", {"base_bdev_name": "M0", "name": "P0"})
                assert await stream.until("bdev_register", name="P0")
                uri = rpc.call("nbd_start_disk", {"bdev_name": "P0",
                                                  "nbd_device": "nbd://127.0.0.1:0/p0"})
                added = await stream.until("export_add", export=uri)
                assert added["protocol"] == "nbd" and added["bdev"] == "P0"
                await asyncio.to_thread(qemu_io, uri, "read 0 4k")
                opened = await stream.until("connection_open", export=uri)
                closed = await stream.until("connection_close", export=uri)
                assert opened["peer"] == closed["peer"]

                # Hot-remove: the NBD server under an NBD bdev goes away.
                for _ in range(100):
                    if nbdkit_sock.exists():
                        break
                    await asyncio.sleep(0.05)
                rpc.call("bdev_nbd_create", {"name": "R0",
                                             "uri": f"nbd+unix:///?socket={nbdkit_sock}"})
                assert await stream.until("bdev_register", name="R0")
                nbdkit.kill()  # gone at once (on SIGTERM it waits for its clients)
                gone = await stream.until("bdev_unregister", name="R0")
                assert gone["hot_remove"] is True and "method" not in gone

                # A delete: the malloc by the call, its passthru (and its export) with it.
                rpc.call("bdev_malloc_delete", {"name": "M0"})
            seen: dict[tuple[str, str], dict[str, Any]] = {}
            wanted = {("bdev_unregister", "M0"), ("bdev_unregister", "P0"), ("export_remove", uri)}
            while not wanted <= seen.keys():  # the three come in any order
                kind, data = await stream.next()
                seen[kind, data.get("name", data.get("export"))] = data
            assert seen["export_remove", uri]["bdev"] == "P0"
            assert seen["bdev_unregister", "P0"]["hot_remove"] is True  # its base went
            base = seen["bdev_unregister", "M0"]
            assert base["method"] == "bdev_malloc_delete" and "hot_remove" not in base
            last_id = base["id"]

            # Resume after a reconnect: Last-Event-ID, and only the types asked for.
            response.close()
            again, resumed = await follow(s, target.url + "/events?types=bdev_register",
                                          **{"Last-Event-ID": "0"})
            kind, first = await resumed.next()
            assert (kind, first["name"], first["id"]) == ("bdev_register", "P0", 1)
            with RpcClient(str(target.sock)) as rpc:
                rpc.call("bdev_null_create", {"name": "N0", "num_blocks": 8,
                                              "block_size": 512})
            kind, data = await resumed.next()
            while data["name"] != "N0":
                assert kind == "bdev_register"
                kind, data = await resumed.next()
            assert data["id"] > last_id
            again.close()
    finally:
        nbdkit.terminate()
        nbdkit.wait()


async def test_stream_ends_when_the_target_stops(target: HttpTarget) -> None:
    async with aiohttp.ClientSession() as s:
        _response, stream = await follow(s, target.url + "/events")
        target.proc.terminate()
        with pytest.raises((EOFError, aiohttp.ClientPayloadError)):
            while True:
                await stream.next(timeout=20)
    assert target.proc.wait(20) == 0
    assert "pybdev stopped" in target.log()
