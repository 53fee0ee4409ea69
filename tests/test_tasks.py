"""Background tasks survive garbage collection and report their failures."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from pybdev import tasks


async def test_a_dropped_background_task_still_runs_to_the_end() -> None:
    done: list[int] = []
    gate = asyncio.Event()

    async def work() -> None:
        await gate.wait()
        done.append(1)

    tasks.background(work(), "test work")  # result dropped on purpose
    gc.collect()
    assert tasks.pending() >= 1
    gate.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert done == [1]


async def test_a_failure_is_logged_with_what_failed(caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="pybdev"):
        task = tasks.background(broken(), "removing bdev X")
        with pytest.raises(RuntimeError):
            await task
        await asyncio.sleep(0)
    assert "removing bdev X failed: boom" in caplog.text
