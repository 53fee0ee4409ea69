"""The :class:`Export` interface: what the nbd subsystem starts, lists, saves and stops.

Two kinds implement it: the network export (:mod:`pybdev.nbd.server`, addressed by an
``nbd://`` / ``nbd+unix://`` URI) and the kernel export (``pybdev.nbd.kernel``,
``/dev/nbdX``).  The subsystem keys exports by their ``nbd_device`` string, so one
method (``nbd_start_disk``), one listing (``nbd_get_disks``) and one config entry cover
both (DESIGN.md, D2).

Contract for an implementation (the kernel export module must define
``KernelExport(Export)`` with the constructor below):

* ``__init__(subsystem, bdev_name, nbd_device)``: cheap, no I/O.  ``nbd_device`` is None
  when the user asked for automatic choice (kernel export only); ``start`` then sets it.
* ``await start()``: open the bdev (:meth:`open_bdev`, which also routes hot-remove),
  acquire the device or listener, and return once clients can use it.  Raise
  :class:`~pybdev.rpc.errors.OperationError` (errno + detail) on failure, having released
  everything.  Afterwards ``nbd_device`` and ``bdev_name`` (the bdev's primary name) are
  final.  To pick a device, ask :meth:`NbdSubsystem.reserve` first: it fails for devices
  already used by this target.
* ``await stop(drain=True)``: idempotent and safe to call concurrently.  Stop taking
  requests, answer those in flight (``drain``) or fail them, close connections cleanly,
  close the descriptor.  Never raises.
* On bdev hot-remove the base class calls ``stop(drain=True)`` and then tells the
  subsystem, which forgets the export.  An export that dies on its own (the kernel
  disconnected the device) calls :meth:`stopped_by_itself` for the same effect.
* ``info()`` is the ``nbd_get_disks`` element, ``config()`` the ``save_config`` entry.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from typing import TYPE_CHECKING, Any, ClassVar

from pybdev.bdev.core import Bdev, BdevEvent, Descriptor
from pybdev.bdev.subsystem import bdev_layer

if TYPE_CHECKING:
    from pybdev.nbd.subsystem import NbdSubsystem

log = logging.getLogger("pybdev.nbd")


class Export(abc.ABC):
    """One bdev exported over NBD, to the kernel or to the network."""

    #: "kernel" or "network": for logs and for code that must tell them apart.
    kind: ClassVar[str]

    def __init__(self, subsystem: NbdSubsystem, bdev_name: str, nbd_device: str | None) -> None:
        self.subsystem = subsystem
        self.bdev_name = bdev_name
        self.nbd_device = nbd_device or ""
        self.desc: Descriptor | None = None
        self.stopping = False
        self._remove_task: asyncio.Task[None] | None = None

    @abc.abstractmethod
    async def start(self) -> None:
        """Make the export usable; raise OperationError (having cleaned up) on failure."""

    @abc.abstractmethod
    async def stop(self, drain: bool = True) -> None:
        """Stop serving; answer in-flight requests first when ``drain``. Idempotent."""

    def info(self) -> dict[str, Any]:
        """The ``nbd_get_disks`` element: ``nbd_device`` then ``bdev_name``, as SPDK."""
        return {"nbd_device": self.nbd_device, "bdev_name": self.bdev_name}

    def config(self) -> dict[str, Any]:
        """The ``save_config`` entry that recreates this export."""
        return {"method": "nbd_start_disk",
                "params": {"nbd_device": self.nbd_device, "bdev_name": self.bdev_name}}

    # -- helpers for implementations -----------------------------------------------------
    def open_bdev(self) -> Descriptor:
        """Open the bdev for write without claiming it (SPDK's nbd does the same)."""
        desc = bdev_layer(self.subsystem.app).open(self.bdev_name, write=True,
                                                   event_cb=self._bdev_event)
        self.bdev_name = desc.bdev.name
        self.desc = desc
        return desc

    def close_bdev(self) -> None:
        if self.desc is not None:
            self.desc.close()

    def on_resize(self, bdev: Bdev) -> None:  # noqa: B027 - optional hook
        """The bdev changed size; implementations update what they advertise."""

    def stopped_by_itself(self) -> None:
        """Tell the subsystem this export is gone without an ``nbd_stop_disk``."""
        self.subsystem.forget(self)

    def _bdev_event(self, event: BdevEvent, bdev: Bdev) -> None:
        if event is BdevEvent.REMOVE:
            if self._remove_task is None:
                log.info("bdev %s removed: stopping export %s", bdev.name, self.nbd_device)
                self._remove_task = asyncio.ensure_future(self._hot_remove())
        elif event is BdevEvent.RESIZE:
            self.on_resize(bdev)

    async def _hot_remove(self) -> None:
        try:
            await self.stop(drain=True)
        finally:
            self.stopped_by_itself()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.nbd_device} bdev={self.bdev_name}>"
