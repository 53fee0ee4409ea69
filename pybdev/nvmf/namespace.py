"""A namespace: one bdev exported through an NVM subsystem, on the export base.

:class:`Namespace` is an :class:`~pybdev.export.base.Export` like the NBD and ublk
exports, so its life is theirs (``pybdev/export/base.py``):

* **open**: the bdev opened for write with its events routed here, then claimed by
  ``NVMe-oF Target`` (as SPDK's ``nvmf_subsystem_add_ns``).
* **stop** (``nvmf_subsystem_remove_ns``, subsystem deletion, and the bdev's hot-remove,
  one sequence): the NSID leaves the subsystem's table first, so new commands get
  Invalid Namespace, and the controllers get a namespace-attribute notice (an AEN, then
  the changed-namespace log); then the commands in flight are answered; then the claim
  is released and the descriptor closed.
* **resize**: the controllers get the same notice; the host re-reads Identify Namespace.

Commands in flight are counted here (``inflight``), which is what the drain waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid as uuidlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from pybdev.bdev.core import Bdev, BdevLayer
from pybdev.errors import OperationError
from pybdev.export.base import Export

if TYPE_CHECKING:
    from pybdev.nvmf.target import NvmSubsystem

log = logging.getLogger("pybdev.nvmf")

CLAIM_MODULE = "NVMe-oF Target"
#: How long a stop waits for commands in flight (a stuck bdev must not stall the RPC).
DRAIN_TIMEOUT = 30.0


class Namespace(Export):
    """NSID ``nsid`` of subsystem ``sub``, backed by one claimed bdev."""

    kind: ClassVar[str] = "nvmf"

    def __init__(self, layer: BdevLayer, sub: NvmSubsystem, nsid: int, bdev_name: str,
                 notify: Callable[[NvmSubsystem, int], None]) -> None:
        super().__init__(layer, bdev_name)
        self.sub = sub
        self.nsid = nsid
        #: the name given to nvmf_subsystem_add_ns (an alias stays an alias in save_config)
        self.name_given = bdev_name
        self.notify = notify
        self.uuid: str | None = None
        self.nguid: bytes | None = None
        self.eui64: bytes | None = None
        self.anagrpid = nsid
        self.no_auto_visible = False
        self.ptpl_file: str | None = None
        self.inflight = 0
        self._idle: asyncio.Future[None] | None = None

    # -- life ------------------------------------------------------------------------------
    def open(self) -> None:
        """Open and claim the bdev; raise OperationError (nothing left open) on failure."""
        desc = self.open_bdev()
        try:
            self.layer.claim(desc, CLAIM_MODULE)
        except OperationError:
            self.close_bdev()
            raise

    def unclaim_and_close(self) -> None:
        """Undo :meth:`open` for a namespace that never served (refused after opening)."""
        desc = self.desc
        if desc is not None and desc.claim is not None:
            self.layer.release_claim(desc)
        self.close_bdev()

    @property
    def bdev(self) -> Bdev:
        desc = self.desc
        if desc is None:
            raise OperationError(19, f"namespace {self.nsid} is closed")
        return desc.bdev

    def io_done(self) -> None:
        """A command of this namespace completed (the controller calls it)."""
        self.inflight -= 1
        if self.inflight == 0 and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def stop_accepting(self, drain: bool) -> None:
        if self.sub.namespaces.get(self.nsid) is self:
            del self.sub.namespaces[self.nsid]
            self.notify(self.sub, self.nsid)

    async def drain(self, drain: bool) -> None:
        if not drain or self.inflight == 0:
            return
        self._idle = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._idle), DRAIN_TIMEOUT)
        except TimeoutError:
            log.warning("%r: %d commands still in flight after %.0f s; closing anyway",
                        self, self.inflight, DRAIN_TIMEOUT)

    def abort(self) -> None:
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def release(self) -> None:
        desc = self.desc
        if desc is not None and desc.claim is not None:
            with contextlib.suppress(OperationError):
                self.layer.release_claim(desc)

    def on_resize(self, bdev: Bdev) -> None:
        log.info("bdev %s resized to %d blocks: notifying hosts of namespace %d of %s",
                 bdev.name, bdev.num_blocks, self.nsid, self.sub.nqn)
        self.notify(self.sub, self.nsid)

    def on_gone(self) -> None:
        log.info("bdev %s removed: namespace %d of %s is gone", self.bdev_name, self.nsid,
                 self.sub.nqn)

    # -- what the RPCs show ----------------------------------------------------------------
    def to_json(self, ana: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"nsid": self.nsid, "bdev_name": self.name_given,
                               "name": self.name_given}
        if self.nguid and any(self.nguid):
            out["nguid"] = self.nguid.hex().upper()
        if self.eui64 and any(self.eui64):
            out["eui64"] = self.eui64.hex().upper()
        if self.uuid:
            out["uuid"] = self.uuid
        if ana:
            out["anagrpid"] = self.anagrpid
        return out

    @property
    def uuid_bytes(self) -> bytes | None:
        return uuidlib.UUID(self.uuid).bytes if self.uuid else None

    def __repr__(self) -> str:
        return f"<Namespace {self.sub.nqn} nsid={self.nsid} bdev={self.bdev_name}>"
