"""The :class:`Export` base: one bdev served to clients of one protocol.

Every export (network NBD, kernel NBD, ublk, and the NVMe/TCP target to come) has the
same life, written here once:

* **open**: :meth:`Export.open_bdev` opens the bdev for write without claiming it (as
  SPDK's nbd and ublk do) and routes the bdev's events to this export.
* **stop**: :meth:`Export.stop` runs, once, whoever asks and however often:

  1. ``stopping`` is set: new clients, connections or queues are refused from now on;
  2. :meth:`stop_accepting`: the protocol stops taking requests (close listeners, tell
     the kernel to disconnect, stop the device);
  3. :meth:`drain`: requests in flight are answered (``drain=True``) or failed;
  4. :meth:`release`: the protocol's own resources go (listeners, device files);
  5. the descriptor is closed (only now: in-flight requests still needed it), then
     :meth:`on_stopped`.

  A later ``stop(drain=False)`` during a drain calls :meth:`abort` to cut it short.
  Hook failures are logged, never raised: a stop always finishes and closes the bdev.
* **hot-remove**: the bdev's REMOVE event stops the export with ``drain=True`` (the bdev
  already fails new I/O, so in-flight requests end quickly), then :meth:`on_gone` tells
  the owner to forget it.  An export that dies on its own (the kernel ended its device)
  calls :meth:`end_by_itself` for the same effect.
* **resize**: the RESIZE event calls :meth:`on_resize`.

Subclasses implement :meth:`drain` and whichever other hooks they need; ``info`` and
``config`` stay protocol-specific.
"""

from __future__ import annotations

import abc
import asyncio
import errno
import logging
from collections.abc import Awaitable, Callable
from typing import ClassVar

from pybdev.bdev.core import Bdev, BdevEvent, BdevLayer, Descriptor
from pybdev.errors import OperationError

log = logging.getLogger("pybdev.export")


class Export(abc.ABC):
    """One bdev exported over one protocol."""

    #: For logs, and for code that must tell export kinds apart ("network", "kernel", ...).
    kind: ClassVar[str]

    def __init__(self, layer: BdevLayer, bdev_name: str) -> None:
        self.layer = layer
        self.bdev_name = bdev_name
        self.desc: Descriptor | None = None
        #: Set as the stop begins: whatever admits new clients or requests checks it.
        self.stopping = False
        self._stop_task: asyncio.Task[None] | None = None
        self._end_task: asyncio.Task[None] | None = None

    # -- life ------------------------------------------------------------------------------
    def open_bdev(self, bdev_name: str | None = None) -> Descriptor:
        """Open the bdev for write, unclaimed; its REMOVE and RESIZE events come here."""
        desc = self.layer.open(bdev_name or self.bdev_name, write=True,
                               event_cb=self._bdev_event)
        self.bdev_name = desc.bdev.name  # the primary name, even when opened by an alias
        self.desc = desc
        return desc

    def close_bdev(self) -> None:
        desc, self.desc = self.desc, None
        if desc is not None:
            desc.close()

    async def stop(self, drain: bool = True) -> None:
        """Stop serving (see the module doc).  Idempotent, safe to call concurrently,
        never raises; returns once the bdev is closed."""
        task = self._stop_task
        if task is None:
            self.stopping = True
            # A task of its own: a caller cancelled while waiting must not leave the
            # export half torn down.
            task = asyncio.get_running_loop().create_task(self._stop_sequence(drain))
            self._stop_task = task
        elif not drain and not task.done():
            self._hook("abort", self.abort)
        await asyncio.shield(task)

    @property
    def stopped(self) -> bool:
        return self._stop_task is not None and self._stop_task.done()

    def end_by_itself(self, drain: bool, reason: str) -> None:
        """Stop without the owner asking (hot-remove, device gone); then :meth:`on_gone`."""
        if self._end_task is not None:
            return
        log.info("%r: %s; stopping the export", self, reason)
        self._end_task = asyncio.get_running_loop().create_task(self._end(drain))

    # -- hooks -----------------------------------------------------------------------------
    async def stop_accepting(self, drain: bool) -> None:  # noqa: B027 - optional hook
        """Take no new requests (``stopping`` is already set)."""

    @abc.abstractmethod
    async def drain(self, drain: bool) -> None:
        """Wait for the requests in flight: answered when ``drain``, else failed/cut."""

    async def release(self) -> None:  # noqa: B027 - optional hook
        """Release the protocol's resources; nothing is in flight any more."""

    def abort(self) -> None:  # noqa: B027 - optional hook
        """A ``stop(drain=False)`` arrived while a stop drains: cut the drain short."""

    def on_resize(self, bdev: Bdev) -> None:  # noqa: B027 - optional hook
        """The bdev changed size: update what the protocol advertises."""

    def on_stopped(self) -> None:  # noqa: B027 - optional hook
        """The stop finished and the bdev is closed."""

    def on_gone(self) -> None:  # noqa: B027 - optional hook
        """The export ended by itself (hot-remove, device gone): the owner forgets it."""

    # -- internals -------------------------------------------------------------------------
    async def _stop_sequence(self, drain: bool) -> None:
        try:
            await self._step("stop_accepting", self.stop_accepting(drain))
            await self._step("drain", self.drain(drain))
            await self._step("release", self.release())
        finally:
            self.close_bdev()
            self._hook("on_stopped", self.on_stopped)

    async def _step(self, name: str, coro: Awaitable[None]) -> None:
        try:
            await coro
        except Exception:
            log.exception("%r: %s failed; stopping anyway", self, name)

    def _hook(self, name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            log.exception("%r: %s failed", self, name)

    async def _end(self, drain: bool) -> None:
        try:
            await self.stop(drain)
        finally:
            self._hook("on_gone", self.on_gone)

    def _bdev_event(self, event: BdevEvent, bdev: Bdev) -> None:
        if event is BdevEvent.REMOVE:
            self.end_by_itself(True, f"bdev {bdev.name} removed")
        elif event is BdevEvent.RESIZE:
            self._hook("on_resize", lambda: self.on_resize(bdev))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} bdev={self.bdev_name}>"


def refuse_interleaved_md(bdev: Bdev, what: str) -> None:
    """-EINVAL for a bdev whose blocks carry interleaved metadata (520, 4160 bytes ...).

    The kernel's block layer takes power-of-two block sizes and no metadata: SPDK's nbd
    fails ``NBD_SET_BLKSIZE`` with -EINVAL for such a bdev, and its ublk fails every I/O;
    pybdev refuses both up front, saying why. Separate metadata is no obstacle: the
    export moves the data alone, as SPDK's do.
    """
    if bdev.md_size and bdev.md_interleave:
        raise OperationError(
            errno.EINVAL,
            f"bdev {bdev.name} has {bdev.md_size} bytes of interleaved metadata per block "
            f"(block size {bdev.block_size}): {what} carries data in power-of-two blocks only")
