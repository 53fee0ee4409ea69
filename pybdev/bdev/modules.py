"""The built-in bdev modules, in SPDK's registration order (docs/architecture.md).

The order decides the order of module configs in ``save_config``. Plugins add their
modules after these (:mod:`pybdev.assembly`).
"""

from __future__ import annotations

from pybdev.bdev.aio import AioModule
from pybdev.bdev.core import BdevModule
from pybdev.bdev.error import ErrorModule
from pybdev.bdev.lvol.module import LvolModule
from pybdev.bdev.malloc import MallocModule
from pybdev.bdev.nbd import NbdModule
from pybdev.bdev.null import NullModule
from pybdev.bdev.passthru import PassthruModule
from pybdev.bdev.rbd import RbdModule

BUILTIN_MODULES: tuple[type[BdevModule], ...] = (
    MallocModule, NullModule, PassthruModule, LvolModule, ErrorModule, AioModule, NbdModule,
    RbdModule,
)
