"""The ``ublk`` subsystem: the ublk target and its /dev/ublkbN devices."""

from __future__ import annotations

from pybdev.subsystem import Config, Subsystem, register_subsystem


@register_subsystem
class UblkSubsystem(Subsystem):
    name = "ublk"
    depends_on = ("bdev",)

    def write_config(self) -> Config | None:
        return []
