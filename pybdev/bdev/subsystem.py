"""The ``bdev`` subsystem: owns the :class:`BdevLayer` and loads the modules in order.

Module order is SPDK's: ``pybdev.bdev.modules`` lists the files in link order and
:meth:`BdevLayer.add_module` puts the modules with examine at the head, as SPDK's
``spdk_bdev_module_list_add`` does. That order is the order of module configs in
``save_config``: vbdev creates (delay, split, error, passthru) come before the bases they
sit on, and replay because their creation waits for the base (docs/vbdev-framework.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pybdev.bdev.core import BdevLayer, M
from pybdev.subsystem import Config, Subsystem, register_subsystem

if TYPE_CHECKING:
    from pybdev.app import App

@register_subsystem
class BdevSubsystem(Subsystem):
    name = "bdev"

    def __init__(self, app: App) -> None:
        super().__init__(app)
        from pybdev.bdev.modules import module_classes

        self.layer = BdevLayer()
        for cls in module_classes():
            self.layer.add_module(cls(self.layer))

    async def fini(self) -> None:
        await self.layer.shutdown()

    def write_config(self) -> Config | None:
        layer = self.layer
        config: list[Any] = [{"method": "bdev_set_options", "params": dict(layer.options)}]
        config += [{"method": "bdev_examine", "params": {"name": n}}
                   for n in layer.examine_allowlist]
        for module in layer.modules:
            config += module.write_config()
        for bdev in layer:
            config += bdev.write_config()
        config.append({"method": "bdev_wait_for_examine"})
        return config


def bdev_layer(app: App) -> BdevLayer:
    return app.subsystem(BdevSubsystem).layer


def bdev_module(app: App, cls: type[M]) -> M:
    """The target's instance of bdev module ``cls`` (for RPC handlers)."""
    return app.subsystem(BdevSubsystem).layer.module(cls)

