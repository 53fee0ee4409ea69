"""The Export base through a toy protocol: hot-remove order, drain, idempotent stop, resize."""

from __future__ import annotations

import asyncio
import uuid as uuidlib

from pybdev.bdev.core import Bdev, BdevLayer
from pybdev.bdev.malloc import MallocModule
from pybdev.export.base import Export


class ToyExport(Export):
    """Requests are futures the test resolves; every hook call is recorded in order."""

    kind = "toy"

    def __init__(self, layer: BdevLayer, bdev_name: str, fail: str = "") -> None:
        super().__init__(layer, bdev_name)
        self.events: list[str] = []
        self.inflight: list[asyncio.Future[None]] = []
        self.fail = fail
        self.sizes: list[int] = []

    def submit(self) -> asyncio.Future[None]:
        assert not self.stopping, "a stopping export takes no request"
        fut = asyncio.get_running_loop().create_future()
        self.inflight.append(fut)
        return fut

    def _record(self, name: str) -> None:
        # The descriptor state is part of the record: it must stay open until after drain.
        self.events.append(f"{name}:{'open' if self.desc is not None else 'closed'}")
        if name == self.fail:
            raise RuntimeError(f"{name} failed")

    async def stop_accepting(self, drain: bool) -> None:
        self._record("stop_accepting")

    async def drain(self, drain: bool) -> None:
        self._record("drain")
        if not drain:
            for fut in self.inflight:
                fut.cancel()
        await asyncio.gather(*self.inflight, return_exceptions=True)

    def abort(self) -> None:
        self._record("abort")
        for fut in self.inflight:
            fut.cancel()

    async def release(self) -> None:
        self._record("release")

    def on_stopped(self) -> None:
        self._record("on_stopped")

    def on_gone(self) -> None:
        self._record("on_gone")

    def on_resize(self, bdev: Bdev) -> None:
        self.sizes.append(bdev.size)


def malloc(layer: BdevLayer, name: str = "M0", uuid: str | None = None) -> Bdev:
    return layer.module(MallocModule).create(name=name, block_size=512, num_blocks=64,
                                             uuid=uuid)


async def until(cond: object, timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.001)
    await asyncio.wait_for(poll(), timeout)


async def test_hot_remove_stops_accepting_drains_then_closes(layer: BdevLayer) -> None:
    bdev = malloc(layer)
    export = ToyExport(layer, "M0")
    export.open_bdev()
    request = export.submit()
    removal = asyncio.ensure_future(layer.unregister(bdev))
    await until(lambda: "drain:open" in export.events)
    # The bdev stays open while a request is in flight: the unregister waits for it.
    await asyncio.sleep(0.05)
    assert export.stopping and export.desc is not None and not removal.done()
    request.set_result(None)
    await asyncio.wait_for(removal, 5)
    assert export.events == ["stop_accepting:open", "drain:open", "release:open",
                             "on_stopped:closed", "on_gone:closed"]
    assert export.stopped and layer.get("M0") is None


async def test_stop_is_idempotent_and_concurrent_stops_share_one_sequence(
        layer: BdevLayer) -> None:
    malloc(layer)
    export = ToyExport(layer, "M0")
    desc = export.open_bdev()
    request = export.submit()
    first = asyncio.ensure_future(export.stop())
    second = asyncio.ensure_future(export.stop())
    await asyncio.sleep(0.01)
    assert not first.done() and not second.done()
    request.set_result(None)
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    await export.stop()
    assert export.events == ["stop_accepting:open", "drain:open", "release:open",
                             "on_stopped:closed"]
    assert desc.closed and "on_gone:closed" not in export.events


async def test_stop_without_drain_during_a_drain_aborts_it(layer: BdevLayer) -> None:
    malloc(layer)
    export = ToyExport(layer, "M0")
    export.open_bdev()
    request = export.submit()
    draining = asyncio.ensure_future(export.stop(drain=True))
    await until(lambda: "drain:open" in export.events)
    await asyncio.wait_for(export.stop(drain=False), 5)
    assert request.cancelled() and draining.done()
    assert "abort:open" in export.events and export.desc is None


async def test_a_failing_hook_still_closes_the_bdev(layer: BdevLayer) -> None:
    bdev = malloc(layer)
    export = ToyExport(layer, "M0", fail="drain")
    export.open_bdev()
    await asyncio.wait_for(export.stop(), 5)  # logs, never raises
    assert export.events == ["stop_accepting:open", "drain:open", "release:open",
                             "on_stopped:closed"]
    assert not bdev.descriptors


async def test_end_by_itself_runs_once_and_tells_the_owner(layer: BdevLayer) -> None:
    malloc(layer)
    export = ToyExport(layer, "M0")
    export.open_bdev()
    export.end_by_itself(False, "device gone")
    export.end_by_itself(True, "and again")
    await until(lambda: "on_gone:closed" in export.events)
    await asyncio.sleep(0.01)
    assert export.events.count("on_gone:closed") == 1
    assert export.events.count("drain:open") == 1


async def test_resize_reaches_the_hook_and_alias_opens_give_the_primary_name(
        layer: BdevLayer) -> None:
    u = str(uuidlib.uuid4())
    bdev = malloc(layer, uuid=u)
    export = ToyExport(layer, u)
    export.open_bdev()
    assert export.bdev_name == "M0"
    layer.resize(bdev, 128)
    await until(lambda: export.sizes)
    assert export.sizes == [128 * 512]
    await export.stop()
