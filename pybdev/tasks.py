"""Background tasks that nobody awaits, kept alive until they end.

The event loop holds only weak references to tasks: one whose result is dropped can be
garbage-collected mid-flight (asyncio's documentation of ``create_task``).  Fire-and-forget
work (unregistering a bdev that vanished, a thread left to finish after a timeout) goes
through :func:`background`, which keeps a reference until the task is done and logs a
failure instead of losing it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

log = logging.getLogger("pybdev")

T = TypeVar("T")

_running: set[asyncio.Future[Any]] = set()


def background(work: Awaitable[T], what: str) -> asyncio.Future[T]:
    """Run ``work`` (a coroutine or future) to completion without an awaiting caller."""
    task = asyncio.ensure_future(work)
    _running.add(task)
    task.add_done_callback(lambda t: _finished(t, what))
    return task


def _finished(task: asyncio.Future[Any], what: str) -> None:
    _running.discard(task)
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("%s failed: %s", what, exc, exc_info=exc)


def pending() -> int:
    """How many background tasks are still running (for tests)."""
    return len(_running)
