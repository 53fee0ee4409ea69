"""The NBD flavour of :class:`~pybdev.export.base.Export`: what the nbd subsystem starts,
lists, saves and stops.

Two kinds implement it: the network export (:mod:`pybdev.nbd.server`, addressed by an
``nbd://`` / ``nbd+unix://`` URI) and the kernel export (``pybdev.nbd.kernel``,
``/dev/nbdX``).  The subsystem keys exports by their ``nbd_device`` string, so one
method (``nbd_start_disk``), one listing (``nbd_get_disks``) and one config entry cover
both (see docs/architecture.md).

Contract for an implementation (the kernel export module must define
``KernelExport(NbdExport)`` with the constructor below), beyond the base's stop hooks:

* ``__init__(subsystem, bdev_name, nbd_device)``: cheap, no I/O.  ``nbd_device`` is None
  when the user asked for automatic choice (kernel export only); ``start`` then sets it.
* ``await start()``: open the bdev (:meth:`open_bdev`, which also routes hot-remove),
  acquire the device or listener, and return once clients can use it.  Raise
  :class:`~pybdev.errors.OperationError` (errno + detail) on failure, having released
  everything.  Afterwards ``nbd_device`` and ``bdev_name`` (the bdev's primary name) are
  final.  To pick a device, ask :meth:`NbdSubsystem.reserve` first: it fails for devices
  already used by this target.
* An export that ends without ``nbd_stop_disk`` (hot-remove, the kernel disconnected the
  device) is forgotten by the subsystem (:meth:`on_gone`).
* ``info()`` is the ``nbd_get_disks`` element, ``config()`` the ``save_config`` entry.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, Final

from pybdev.export import io
from pybdev.export.base import Export
from pybdev.proto import nbd as proto

if TYPE_CHECKING:
    from pybdev.nbd.subsystem import NbdSubsystem

# NBD command -> bdev operation (pybdev.export.io), for both NBD exports.  Indexed only
# after the request validator accepted the command, so the type is one of these or a
# protocol-only command (DISC, CACHE, BLOCK_STATUS) handled before.
NBD_OPS: Final = io.op_table({
    proto.NBD_CMD_READ: io.READ,
    proto.NBD_CMD_WRITE: io.WRITE,
    proto.NBD_CMD_FLUSH: io.FLUSH,
    proto.NBD_CMD_TRIM: io.UNMAP,
    proto.NBD_CMD_WRITE_ZEROES: io.WRITE_ZEROES,
})


class NbdExport(Export):
    """One bdev exported over NBD, to the kernel or to the network."""

    def __init__(self, subsystem: NbdSubsystem, bdev_name: str, nbd_device: str | None) -> None:
        super().__init__(subsystem.layer, bdev_name)
        self.subsystem = subsystem
        self.nbd_device = nbd_device or ""
        # For /metrics: payload bytes clients asked for (counted per batch of requests as
        # they are submitted, not per request).
        self.bytes_read = 0
        self.bytes_written = 0

    @abc.abstractmethod
    async def start(self) -> None:
        """Make the export usable; raise OperationError (having cleaned up) on failure."""

    def info(self) -> dict[str, Any]:
        """The ``nbd_get_disks`` element: ``nbd_device`` then ``bdev_name``, as SPDK."""
        return {"nbd_device": self.nbd_device, "bdev_name": self.bdev_name}

    def config(self) -> dict[str, Any]:
        """The ``save_config`` entry that recreates this export."""
        return {"method": "nbd_start_disk",
                "params": {"nbd_device": self.nbd_device, "bdev_name": self.bdev_name}}

    def on_gone(self) -> None:
        self.subsystem.forget(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.nbd_device} bdev={self.bdev_name}>"
