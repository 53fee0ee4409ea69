"""Subsystems: what the target is made of (``bdev``, ``nbd``, ``ublk``), in init order.

A subsystem is initialised after the STARTUP part of ``--json`` ran, finished in reverse
order at shutdown, and writes its own part of ``save_config``. Subsystem packages register
a class here at import time; the app makes one instance of each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    from pybdev.app import App

ConfigEntry = dict[str, Any]
# A subsystem's config: entries, where a nested list is a batch (spec §3.2).
Config = list[Any]


class Subsystem:
    """Base class: override what the subsystem needs; the defaults do nothing."""

    name: ClassVar[str]
    depends_on: ClassVar[tuple[str, ...]] = ()

    def __init__(self, app: App) -> None:
        self.app = app

    async def init(self) -> None:
        """Called once, in dependency order, when the framework initialises."""

    async def fini(self) -> None:
        """Called at shutdown in reverse order: stop exports, release resources."""

    def write_config(self) -> Config | None:
        """The calls that recreate the current state, in replay order (None: no writer)."""
        return []


S = TypeVar("S", bound=Subsystem)

_CLASSES: dict[str, type[Subsystem]] = {}


def register_subsystem(cls: type[S]) -> type[S]:
    if cls.name in _CLASSES and _CLASSES[cls.name] is not cls:
        raise ValueError(f"subsystem {cls.name} registered twice")
    _CLASSES[cls.name] = cls
    return cls


def init_order(classes: dict[str, type[Subsystem]] | None = None) -> list[type[Subsystem]]:
    """Topological order, ties broken by registration order, as SPDK sorts them."""
    pending = dict(classes if classes is not None else _CLASSES)
    done: list[type[Subsystem]] = []
    names: set[str] = set()
    while pending:
        for name, cls in pending.items():
            missing = [d for d in cls.depends_on if d not in names]
            unknown = [d for d in missing if d not in pending]
            if unknown:
                raise ValueError(f"subsystem {name} depends on unknown {unknown}")
            if not missing:
                done.append(cls)
                names.add(name)
                del pending[name]
                break
        else:
            raise ValueError(f"dependency cycle among subsystems {list(pending)}")
    return done


def flatten_batches(config: Config) -> Config:
    flat: Config = []
    for entry in config:
        if isinstance(entry, list):
            flat.extend(entry)
        else:
            flat.append(entry)
    return flat
