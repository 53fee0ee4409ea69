"""The ``nbd`` subsystem: kernel (/dev/nbdX) and network NBD exports of bdevs.

Exports are kept in start order, keyed by their ``nbd_device`` string: a device path for
a kernel export, an NBD URI for a network export (docs/decisions/nbd-server-design.md).
``nbd_start_disk`` routes on that string:

* ``nbd://HOST[:PORT]/NAME`` or ``nbd+unix:///NAME?socket=PATH`` -> network export
  (:mod:`pybdev.nbd.server`); a non-loopback address needs ``--nbd-allow-remote``;
* a ``/dev/nbdN`` path or nothing -> kernel export (:mod:`pybdev.nbd.kernel`).

The Python API (:meth:`NbdSubsystem.start_disk`, ``stop_disk``, ``get_disks``) raises
:class:`OperationError`; :mod:`pybdev.nbd.rpc` maps it to SPDK's codes.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
from typing import TYPE_CHECKING, Any

from pybdev.bdev.core import BdevLayer
from pybdev.bdev.subsystem import BdevSubsystem
from pybdev.errors import OperationError
from pybdev.nbd.errors import IllegalDevice
from pybdev.nbd.export import NbdExport
from pybdev.nbd.kernel import MAX_CONNECTIONS, KernelExport
from pybdev.nbd.rpc import RPC
from pybdev.nbd.server import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    NetworkExport,
    NetworkServer,
)
from pybdev.nbd.transmission import DEFAULT_MAX_BUFFERED, MIB
from pybdev.proto.nbd import uri as nbd_uri
from pybdev.subsystem import Config, Subsystem

if TYPE_CHECKING:
    from pybdev.app import App

log = logging.getLogger("pybdev.nbd")

STOP_TIMEOUT = 10.0


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


MAX_POLL_US = 1000  # a spin longer than this would stall every other client noticeably


def _poll_us(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_POLL_US:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and {MAX_POLL_US}")
    return value


class NbdSubsystem(Subsystem):
    name = "nbd"
    depends_on = ("bdev",)
    rpc = RPC

    def __init__(self, app: App) -> None:
        super().__init__(app)
        self.exports: dict[str, NbdExport] = {}  # nbd_device -> export, start order
        self._reserved: set[str] = set()
        self.layer: BdevLayer = app.subsystem(BdevSubsystem).layer
        self.allow_remote = False
        self.network = NetworkServer(allow_remote=False)
        self.network.events = app.notifier.publish
        self._publish = app.notifier.publish

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--nbd-allow-remote", action="store_true",
                            help="let nbd_start_disk serve NBD on non-loopback addresses "
                                 "(no TLS, no authentication)")

        parser.add_argument("--nbd-max-connections", type=_positive_int,
                            default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                            help="NBD network clients per listener; more are refused "
                                 f"(default {DEFAULT_MAX_CONNECTIONS})")
        parser.add_argument("--nbd-handshake-timeout", type=float,
                            default=DEFAULT_HANDSHAKE_TIMEOUT, metavar="SECONDS",
                            help="close an NBD client that has not finished its handshake "
                                 f"(default {DEFAULT_HANDSHAKE_TIMEOUT:.0f})")
        parser.add_argument("--nbd-max-buffered-mb", type=_positive_int,
                            default=DEFAULT_MAX_BUFFERED // MIB, metavar="MIB",
                            help="write payload the NBD server buffers across all its clients "
                                 f"(default {DEFAULT_MAX_BUFFERED // MIB})")

        parser.add_argument("--nbd-poll-us", type=_poll_us, default=0, metavar="US",
                            help="after answering, spin up to US microseconds for a client's "
                                 "next request instead of waiting in the event loop: lower "
                                 "latency at queue depth 1 for CPU (default 0: off; at most "
                                 f"{MAX_POLL_US})")

    def configure(self, options: argparse.Namespace) -> None:
        self.allow_remote = options.nbd_allow_remote
        network = self.network
        network.allow_remote = self.allow_remote
        network.max_connections = options.nbd_max_connections
        network.handshake_timeout = options.nbd_handshake_timeout
        network.budget.cap = options.nbd_max_buffered_mb * MIB
        network.poll_us = options.nbd_poll_us

    # -- Python API ------------------------------------------------------------------------
    async def start_disk(self, bdev_name: str, nbd_device: str | None = None,
                         num_connections: int | None = None) -> NbdExport:
        """Export ``bdev_name`` at ``nbd_device`` (URI, device path, or None: auto).

        ``num_connections`` (kernel exports only, 1 to ``MAX_CONNECTIONS``): sockets the
        kernel spreads the device's requests over.
        """
        export = self._make_export(bdev_name, nbd_device, num_connections)
        # SPDK opens the bdev before it looks at the device node: an unknown bdev is -19
        # even where the nbd kernel module is not loaded.
        if self.layer.get(bdev_name) is None:
            raise OperationError(errno.ENODEV, f"bdev {bdev_name} not found")
        if nbd_device is not None and not self.reserve(nbd_device):
            raise OperationError(errno.EBUSY, f"{nbd_device} is already exported")
        try:
            await export.start()
        finally:
            if nbd_device is not None:
                self.release(nbd_device)
        key = export.nbd_device
        if export.stopping:  # hot-removed while it started
            await export.stop(drain=False)
            raise OperationError(errno.ENODEV, f"bdev {bdev_name} was removed")
        if key in self.exports:  # an auto-picked or port-0 name another start took
            await export.stop(drain=False)
            raise OperationError(errno.EBUSY, f"{key} is already exported")
        self.exports[key] = export
        log.info("exporting bdev %s at %s", export.bdev_name, key)
        self._publish("export_add", {"export": key, "protocol": "nbd",
                                     "bdev": export.bdev_name})
        return export

    async def stop_disk(self, nbd_device: str) -> None:
        export = self.exports.get(nbd_device)
        if export is None:
            raise OperationError(errno.ENODEV, f"{nbd_device} is not exported")
        try:
            await asyncio.wait_for(export.stop(drain=True), STOP_TIMEOUT)
        except TimeoutError:
            log.warning("export %s did not drain in %ss; forced", nbd_device, STOP_TIMEOUT)
            await export.stop(drain=False)
        self.forget(export)
        log.info("stopped export %s", nbd_device)

    def get_disks(self, nbd_device: str | None = None) -> list[dict[str, Any]]:
        if nbd_device is None:
            return [e.info() for e in self.exports.values()]
        export = self.exports.get(nbd_device)
        if export is None:
            raise OperationError(errno.ENODEV, f"{nbd_device} is not exported")
        return [export.info()]

    # -- for NbdExport implementations --------------------------------------------------------
    def reserve(self, nbd_device: str) -> bool:
        """Claim a device name while an export starts; False if this target uses it."""
        if nbd_device in self.exports or nbd_device in self._reserved:
            return False
        self._reserved.add(nbd_device)
        return True

    def release(self, nbd_device: str) -> None:
        self._reserved.discard(nbd_device)

    def in_use(self, nbd_device: str) -> bool:
        return nbd_device in self.exports or nbd_device in self._reserved

    def forget(self, export: NbdExport) -> None:
        if self.exports.get(export.nbd_device) is export:
            del self.exports[export.nbd_device]
            self._publish("export_remove", {"export": export.nbd_device, "protocol": "nbd",
                                            "bdev": export.bdev_name})

    # -- subsystem hooks -------------------------------------------------------------------
    async def fini(self) -> None:
        for export in reversed(list(self.exports.values())):
            try:
                await asyncio.wait_for(export.stop(drain=True), STOP_TIMEOUT)
            except Exception:
                log.exception("export %s did not stop cleanly", export.nbd_device)
                await export.stop(drain=False)
            self.forget(export)
        await self.network.close()

    def write_config(self) -> Config | None:
        return [e.config() for e in self.exports.values()]

    # -- internals -------------------------------------------------------------------------
    def _make_export(self, bdev_name: str, nbd_device: str | None,
                     num_connections: int | None) -> NbdExport:
        if nbd_device is not None and nbd_uri.is_uri(nbd_device):
            if num_connections is not None:
                raise OperationError(errno.EINVAL,
                                     "num_connections is for kernel exports (/dev/nbdN); a "
                                     "network client opens as many connections as it wants")
            try:
                address = nbd_uri.parse(nbd_device)
            except nbd_uri.UriError as e:
                raise IllegalDevice(nbd_device, str(e)) from None
            return NetworkExport(self, bdev_name, nbd_device, address)
        if num_connections is not None and not 1 <= num_connections <= MAX_CONNECTIONS:
            raise OperationError(errno.EINVAL, f"num_connections {num_connections} is not "
                                               f"between 1 and {MAX_CONNECTIONS}")
        return KernelExport(self, bdev_name, nbd_device, num_connections or 1)
