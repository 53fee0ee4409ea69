"""The ``nbd`` subsystem: kernel (/dev/nbdX) and network NBD exports of bdevs."""

from __future__ import annotations

from pybdev.subsystem import Config, Subsystem, register_subsystem


@register_subsystem
class NbdSubsystem(Subsystem):
    name = "nbd"
    depends_on = ("bdev",)

    def write_config(self) -> Config | None:
        return []
