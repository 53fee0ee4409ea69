"""The bdev module files, in SPDK's registration order, and the bdev-layer RPCs.

Importing this registers every module's RPCs. Each module file defines ``MODULE``, its
:class:`~pybdev.bdev.core.BdevModule` subclass. A file that is absent is skipped, so the
package works while modules are being written.
"""

from __future__ import annotations

import importlib

from pybdev.bdev import rpc as _rpc  # noqa: F401  (registers the bdev-layer RPCs)
from pybdev.bdev.core import BdevModule

# SPDK's link order (mk/spdk.modules.mk); BdevLayer.add_module then moves the modules with
# examine (passthru, error, split, delay) to the head, reversed, as SPDK's list does.
MODULE_FILES = ("malloc", "null", "passthru", "error", "split", "delay", "aio", "nbd", "rbd")


def module_classes() -> list[type[BdevModule]]:
    classes = []
    for name in MODULE_FILES:
        try:
            mod = importlib.import_module(f"pybdev.bdev.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"pybdev.bdev.{name}":
                continue
            raise
        classes.append(mod.MODULE)
    return classes


module_classes()
