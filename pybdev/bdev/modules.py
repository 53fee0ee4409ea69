"""The built-in bdev modules, in SPDK's link order (docs/architecture.md).

With the head insertion of :meth:`BdevLayer.add_module` this gives SPDK's module list,
whose order is the order of module configs in ``save_config`` (docs/vbdev-framework.md).
Plugins add their modules after these (:mod:`pybdev.assembly`).
"""

from __future__ import annotations

from pybdev.bdev.aio import AioModule
from pybdev.bdev.core import BdevModule
from pybdev.bdev.delay import DelayModule
from pybdev.bdev.error import ErrorModule
from pybdev.bdev.lvol.module import LvolModule
from pybdev.bdev.malloc import MallocModule
from pybdev.bdev.nbd import NbdModule
from pybdev.bdev.null import NullModule
from pybdev.bdev.nvme import NvmeModule
from pybdev.bdev.passthru import PassthruModule
from pybdev.bdev.rbd import RbdModule
from pybdev.bdev.split import SplitModule

# SPDK's link order (mk/spdk.modules.mk); BdevLayer.add_module then moves the modules with
# examine (passthru, error, split, delay) to the head, reversed, as SPDK's list does.
BUILTIN_MODULES: tuple[type[BdevModule], ...] = (
    MallocModule, NullModule, NvmeModule, PassthruModule, LvolModule, ErrorModule, SplitModule,
    DelayModule, AioModule, NbdModule, RbdModule,
)
