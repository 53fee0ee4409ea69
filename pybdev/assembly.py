"""What a target is made of: the built-in parts plus the plugins installed beside pybdev.

A :class:`Plugin` declares what it contributes — bdev modules and subsystems — and each of
those declares its RPC methods, command-line options, config writer and examine. The app
builds itself from :func:`assemble`'s result; nothing registers by being imported.

Plugins are found through Python entry points in the group ``pybdev.modules``; each entry
point names a :class:`Plugin` object (docs/plugins.md). Their ``scripts/rpc.py`` commands
come through the group ``pybdev.cli`` (:mod:`pybdev.cli`), so the command line needs no
import of the target's code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata

from pybdev.accel.subsystem import AccelSubsystem
from pybdev.bdev.core import BdevModule
from pybdev.bdev.modules import BUILTIN_MODULES
from pybdev.bdev.subsystem import BdevSubsystem
from pybdev.iobuf import IobufSubsystem
from pybdev.nbd.subsystem import NbdSubsystem
from pybdev.nvmf.subsystem import NvmfSubsystem
from pybdev.scheduler import SchedulerSubsystem
from pybdev.subsystem import Subsystem, init_order
from pybdev.ublk.subsystem import UblkSubsystem

log = logging.getLogger("pybdev.assembly")

ENTRY_POINT_GROUP = "pybdev.modules"


@dataclass(frozen=True)
class Plugin:
    """A set of parts for the target: bdev modules and subsystems (in that order of use)."""

    name: str
    bdev_modules: tuple[type[BdevModule], ...] = ()
    subsystems: tuple[type[Subsystem], ...] = ()


BUILTIN = Plugin(
    "pybdev",
    bdev_modules=BUILTIN_MODULES,
    # SPDK's init order (module/event/subsystems/*: accel needs iobuf, bdev needs both).
    subsystems=(IobufSubsystem, AccelSubsystem, BdevSubsystem, SchedulerSubsystem,
                NbdSubsystem, UblkSubsystem, NvmfSubsystem),
)


class PluginError(Exception):
    """An installed plugin could not be loaded; the message names it and says why."""


@dataclass
class Assembly:
    """The parts of one target, in the order the app uses them."""

    plugins: list[Plugin]
    errors: list[PluginError] = field(default_factory=list)

    @property
    def bdev_modules(self) -> list[type[BdevModule]]:
        return [m for p in self.plugins for m in p.bdev_modules]

    @property
    def subsystems(self) -> list[type[Subsystem]]:
        """Subsystem classes in init order (dependencies first, then declaration order)."""
        return init_order(s for p in self.plugins for s in p.subsystems)


def load_plugin(entry_point: metadata.EntryPoint) -> Plugin:
    """Import one entry point; raises PluginError naming the plugin and the cause."""
    where = f"plugin {entry_point.name!r} ({entry_point.value})"
    try:
        plugin = entry_point.load()
    except Exception as e:
        raise PluginError(f"{where} failed to import: {type(e).__name__}: {e}") from e
    if not isinstance(plugin, Plugin):
        raise PluginError(f"{where} is a {type(plugin).__name__}, not a pybdev.assembly.Plugin")
    return plugin


def installed_entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)


def assemble(entry_points: Iterable[metadata.EntryPoint] | None = None) -> Assembly:
    """The built-ins plus every plugin that loads; failures are kept in ``errors``."""
    assembly = Assembly([BUILTIN])
    for ep in installed_entry_points() if entry_points is None else entry_points:
        try:
            assembly.plugins.append(load_plugin(ep))
        except PluginError as e:
            assembly.errors.append(e)
    # Fails here, not at first use, when two parts clash or a dependency is missing.
    names = [m.name for m in assembly.bdev_modules]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise PluginError(f"bdev module names declared twice: {', '.join(clashes)}")
    try:
        assembly.subsystems  # noqa: B018 - validates the subsystem graph
    except ValueError as e:
        raise PluginError(str(e)) from None
    return assembly
