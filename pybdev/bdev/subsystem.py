"""The ``bdev`` subsystem: owns the :class:`BdevLayer` and the bdev modules it was given.

Module order is SPDK's: ``pybdev.bdev.modules`` lists the built-ins in link order and
:meth:`BdevLayer.add_module` puts the modules with examine at the head, as SPDK's
``spdk_bdev_module_list_add`` does. That order is the order of module configs in
``save_config``: vbdev creates (delay, split, error, passthru) come before the bases they
sit on, and replay because their creation waits for the base (docs/vbdev-framework.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pybdev.bdev.core import BdevLayer
from pybdev.bdev.rpc import RPC as LAYER_RPC
from pybdev.rpc.registry import RpcTable
from pybdev.subsystem import Config, Subsystem

if TYPE_CHECKING:
    from pybdev.app import App


#: The notification types the bdev layer emits (lib/bdev/bdev.c, spdk_bdev_initialize).
NOTIFY_TYPES = ("bdev_register", "bdev_unregister", "bdev_resize")


class BdevSubsystem(Subsystem):
    name = "bdev"
    # SPDK's bdev also depends on keyring, sock and vmd, which pybdev does not have
    # (module/event/subsystems/bdev/bdev.c).
    depends_on = ("accel", "iobuf")

    def __init__(self, app: App) -> None:
        super().__init__(app)
        self.layer = BdevLayer()
        for cls in app.assembly.bdev_modules:
            self.layer.add_module(cls(self.layer))
        for t in NOTIFY_TYPES:
            app.notifier.register_type(t)
        self.layer.observers.append(app.notifier.send)

    def rpc_tables(self) -> Iterator[tuple[RpcTable | None, Any]]:
        # The layer's own methods (bdev_get_bdevs, ...) and then each module's, bound to it.
        yield LAYER_RPC, self.layer
        for module in self.layer.modules:
            yield module.rpc, module

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
    """The target's bdev layer, for code outside the bdev package (exports)."""
    return app.subsystem(BdevSubsystem).layer
