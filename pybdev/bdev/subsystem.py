"""The ``bdev`` subsystem."""

from __future__ import annotations

from pybdev.subsystem import Config, Subsystem, register_subsystem


@register_subsystem
class BdevSubsystem(Subsystem):
    name = "bdev"

    def write_config(self) -> Config | None:
        return [{"method": "bdev_wait_for_examine"}]
