"""Subsystems: what the target is made of (``iobuf``, ``accel``, ``bdev``, ...), in init order.

A subsystem declares what it contributes — its RPC methods (``rpc``), its command-line
options (:meth:`add_options`), its part of ``save_config`` (:meth:`write_config`) — and the
app assembles the built-in ones and those of installed plugins (:mod:`pybdev.assembly`).
It is initialised after the STARTUP part of ``--json`` ran and finished in reverse order at
shutdown.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from pybdev.cpus import WorkerThread
from pybdev.rpc.registry import RpcTable

if TYPE_CHECKING:
    from pybdev.app import App

ConfigEntry = dict[str, Any]
# A subsystem's config: entries, where a nested list is a batch (docs/guide.md, "Configs").
Config = list[Any]


class Subsystem:
    """Base class: override what the subsystem needs; the defaults do nothing."""

    name: ClassVar[str]
    depends_on: ClassVar[tuple[str, ...]] = ()
    #: The RPC methods of this subsystem; handlers receive the subsystem instance.
    rpc: ClassVar[RpcTable | None] = None

    def __init__(self, app: App) -> None:
        self.app = app

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        """Add this subsystem's command-line options to the target's parser."""

    def rpc_tables(self) -> Iterator[tuple[RpcTable | None, Any]]:
        """The RPC tables to serve, each with the object its handlers are bound to."""
        yield self.rpc, self

    def configure(self, options: argparse.Namespace) -> None:
        """Read this subsystem's own command-line options (those :meth:`add_options` added)."""

    async def init(self) -> None:
        """Called once, in dependency order, when the framework initialises."""

    async def fini(self) -> None:
        """Called at shutdown in reverse order: stop exports, release resources."""

    def write_config(self) -> Config | None:
        """The calls that recreate the current state, in replay order (None: no writer)."""
        return []

    def threads(self) -> Iterable[WorkerThread]:
        """Threads this subsystem runs besides the event loop (``framework_get_reactors``).

        Called on the event loop; the threads' ids must be readable there without blocking.
        """
        return ()


def init_order(classes: Iterable[type[Subsystem]]) -> list[type[Subsystem]]:
    """Topological order, ties broken by the order given, as SPDK sorts them."""
    pending: dict[str, type[Subsystem]] = {}
    for cls in classes:
        if cls.name in pending:
            raise ValueError(f"subsystem {cls.name} declared twice")
        pending[cls.name] = cls
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
