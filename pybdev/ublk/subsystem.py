"""The ``ublk`` subsystem: the ublk target and its /dev/ublkbN devices."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pybdev.bdev.subsystem import bdev_layer
from pybdev.subsystem import Config, Subsystem, register_subsystem

if TYPE_CHECKING:
    from pybdev.app import App
    from pybdev.bdev.core import BdevLayer
    from pybdev.ublk.target import UblkTarget

log = logging.getLogger("pybdev.ublk")


@register_subsystem
class UblkSubsystem(Subsystem):
    name = "ublk"
    depends_on = ("bdev",)

    def __init__(self, app: App) -> None:
        super().__init__(app)
        self.target: UblkTarget | None = None
        self.busy = False

    @property
    def layer(self) -> BdevLayer:
        return bdev_layer(self.app)

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

    def write_config(self) -> Config | None:
        if self.target is None:
            return []
        return self.target.config()


# The methods register themselves on import.
from pybdev.ublk import rpc as _rpc  # noqa: E402,F401
