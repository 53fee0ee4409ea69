"""Examine: every module is told of a new bdev; bdev_wait_for_examine waits for slow ones."""

from __future__ import annotations

import asyncio

from pybdev.bdev.core import Bdev, BdevLayer, BdevModule


class SlowExamine(BdevModule):
    """Reads "metadata" from each new bdev: an examine that takes a while, or fails."""

    name = "slow_examine"

    def __init__(self, layer: BdevLayer) -> None:
        super().__init__(layer)
        self.release = asyncio.Event()
        self.seen: list[str] = []

    def examine(self, bdev: Bdev) -> asyncio.Future[None] | None:
        return asyncio.ensure_future(self._read(bdev))

    async def _read(self, bdev: Bdev) -> None:
        await self.release.wait()
        if bdev.name == "Bad":
            raise OSError("unreadable label")
        self.seen.append(bdev.name)


async def test_wait_for_examine_waits_for_asynchronous_examine() -> None:
    layer = BdevLayer()
    module = SlowExamine(layer)
    layer.add_module(module)
    layer.register(Bdev("A", 512, 8))
    layer.register(Bdev("Bad", 512, 8))
    waiter = asyncio.ensure_future(layer.wait_for_examine())
    await asyncio.sleep(0.01)
    assert not waiter.done() and module.seen == []
    module.release.set()
    await asyncio.wait_for(waiter, 5)
    # The failing examine is logged and does not keep the wait from ending.
    assert module.seen == ["A"]
    await layer.shutdown()


async def test_wait_for_examine_answers_at_once_without_pending_examine() -> None:
    layer = BdevLayer()
    layer.register(Bdev("A", 512, 8))
    await asyncio.wait_for(layer.wait_for_examine(), 1)
    await layer.shutdown()
