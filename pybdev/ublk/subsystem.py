"""The ``ublk`` subsystem: the ublk target and its /dev/ublkbN devices."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pybdev.bdev.subsystem import BdevSubsystem
from pybdev.cpus import WorkerThread
from pybdev.subsystem import Config, Subsystem
from pybdev.ublk.rpc import RPC

if TYPE_CHECKING:
    from pybdev.app import App
    from pybdev.bdev.core import BdevLayer
    from pybdev.ublk.target import UblkTarget

log = logging.getLogger("pybdev.ublk")


class UblkSubsystem(Subsystem):
    name = "ublk"
    depends_on = ("bdev", "iobuf")  # module/event/subsystems/ublk/ublk.c
    rpc = RPC

    def __init__(self, app: App) -> None:
        super().__init__(app)
        self.target: UblkTarget | None = None
        self.busy = False
        self.layer: BdevLayer = app.subsystem(BdevSubsystem).layer
        self.app_cpumask = "0x1"

    def configure(self, options: argparse.Namespace) -> None:
        # The app's core mask (-m) bounds the cpumask of ublk_create_target.
        self.app_cpumask = options.cpumask

    async def destroy_target(self) -> None:
        target = self.target
        if target is None:
            return
        try:
            await target.destroy()
        finally:
            self.target = None

    async def fini(self) -> None:
        # Before the bdev subsystem goes: every device stops while its bdev still answers.
        try:
            await self.destroy_target()
        except Exception:
            log.exception("ublk target did not stop cleanly")

    def threads(self) -> Iterator[WorkerThread]:
        target = self.target
        for dev in list(target.devices.values()) if target is not None else ():
            for queue in dev.queues:
                tid = queue.thread.native_id
                if queue.alive and tid is not None:
                    yield WorkerThread(queue.thread.name, tid, queue.cpu)

    def write_config(self) -> Config | None:
        if self.target is None:
            return []
        return self.target.config()
