"""The ``bdev`` subsystem: owns the :class:`BdevLayer` and loads the modules in order.

Module order is SPDK's registration order (spec §3.3): it decides the order of module
configs in ``save_config``, so a base is always created before what sits on it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pybdev.bdev.core import BdevLayer, BdevModule
from pybdev.subsystem import Config, Subsystem, register_subsystem

if TYPE_CHECKING:
    from pybdev.app import App

# Each file defines one module class (``MODULE``) and registers its RPCs when imported.
MODULE_FILES = ("malloc", "null", "passthru", "error", "aio", "nbd", "rbd")
_MODULE_CLASSES: list[type[BdevModule]] = []


def _load_module_files() -> None:
    if _MODULE_CLASSES:
        return
    for name in MODULE_FILES:
        try:
            mod = importlib.import_module(f"pybdev.bdev.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"pybdev.bdev.{name}":
                continue  # a module not written yet
            raise
        _MODULE_CLASSES.append(mod.MODULE)


@register_subsystem
class BdevSubsystem(Subsystem):
    name = "bdev"

    def __init__(self, app: App) -> None:
        super().__init__(app)
        self.layer = BdevLayer()
        for cls in _MODULE_CLASSES:
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


# Last, because module files and the RPC file import bdev_layer from here.
_load_module_files()
importlib.import_module("pybdev.bdev.rpc")
