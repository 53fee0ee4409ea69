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

from pybdev.bdev.core import Bdev, BdevLayer
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
        # SPDK writes these with each bdev's own entries, before bdev_wait_for_examine; an
        # lvol appears only once examine has loaded its lvstore, so here they come after it
        # and replay for every kind of bdev (SPDK's spdk_tgt accepts them in either place).
        for bdev in layer:
            config += bdev_settings(bdev)
        return config


def bdev_settings(bdev: Bdev) -> list[dict[str, Any]]:
    """``bdev_set_qos_limit`` and ``bdev_enable_histogram`` entries for what is set."""
    out: list[dict[str, Any]] = []
    if bdev.qos is not None:
        limits = {k: v for k, v in bdev.qos.rate_limits().items() if v}
        out.append({"method": "bdev_set_qos_limit", "params": {"name": bdev.name, **limits}})
    histogram = bdev.histogram
    if histogram is not None:
        params: dict[str, Any] = {"name": bdev.name, "enable": True}
        if histogram.io_type is not None:
            params["opc"] = histogram.io_type
        # SPDK saves name, enable and opc only, so its replay falls back to the defaults;
        # the values this target accepted are saved whole.
        params.update(granularity=histogram.granularity, min_nsec=histogram.min_nsec,
                      max_nsec=histogram.max_nsec)
        out.append({"method": "bdev_enable_histogram", "params": params})
    return out

