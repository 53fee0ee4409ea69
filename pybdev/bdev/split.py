"""split: equal parts of a base bdev, each a bdev of its own (SPDK's module/bdev/split).

``bdev_split_create BASE COUNT [-s SIZE_MB]`` cuts ``BASE`` into ``BASEp0`` ...
``BASEp{COUNT-1}``: each ``SIZE_MB`` MiB, or ``1/COUNT`` of the base without ``-s``; a
count larger than what fits is clamped. The parts follow SPDK's partition model
(``lib/bdev/part.c``): the base is opened and claimed ``exclusive_write`` once for all
parts, each part forwards its requests with its offset added, and its UUID is derived from
the base's UUID and its block range. The answer is the list of part names, empty when the
base does not exist yet (the parts are created when it registers).

As SPDK's, the config goes away with the parts: when the base is removed, or when
``bdev_split_delete BASE`` (which also forgets a config still waiting for its base). Every
config is saved, built or not.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from typing import Any

from pybdev.bdev.core import Descriptor
from pybdev.bdev.vbdev import (
    PART_EXCLUDED_IO,
    StackedBdev,
    VbdevConfig,
    VbdevModule,
    VirtualBdev,
    part_uuid,
)
from pybdev.errors import OperationError
from pybdev.rpc.errors import INVALID_PARAMS, RpcError
from pybdev.rpc.registry import RpcTable
from pybdev.rpc.types import U32, U64, Params, Str

RPC = RpcTable()

log = logging.getLogger("pybdev.bdev.split")

MB = 1024 * 1024


@dataclass(eq=False)
class SplitConfig(VbdevConfig):
    base_bdev: str
    split_count: int
    split_size_mb: int

    @property
    def base_names(self) -> tuple[str, ...]:
        return (self.base_bdev,)


class SplitBdev(VirtualBdev):
    product_name = "Split Disk"
    module_name = "split"
    follows_resize = False  # a part keeps its range
    copies_pi_format = False  # a bdev_part, as SPDK's

    def driver_specific(self) -> dict[str, Any]:
        return {"split": {"base_bdev": self.base_name, "offset_blocks": self.offset_blocks}}


class SplitModule(VbdevModule[SplitConfig]):
    name = "split"
    rpc = RPC
    open_for_write = False  # SPDK's part base opens read-only; the claim makes it writable
    keep_unbuilt = False
    saves_pending = True

    def create(self, base_bdev: str, split_count: int, split_size_mb: int = 0) -> list[str]:
        """Add the config and split the base now if it exists; the names of the parts.

        Raises OperationError: -22 for a zero count or a size that is not a whole number
        of blocks, -17 when the base already has a split config, -12 when the parts
        cannot be built (SPDK's code for a claimed base, detailed in the message).
        """
        if split_count == 0:
            log.error("Split bdev config: split_count can't be 0.")
            raise OperationError(errno.EINVAL, "split_count can't be 0")
        if any(c.base_bdev == base_bdev for c in self.configs):
            log.error("Split bdev config for base bdev '%s' already exist.", base_bdev)
            raise OperationError(errno.EEXIST, f"split config for {base_bdev} already exists")
        try:
            attachment = self.add(SplitConfig(base_bdev, split_count, split_size_mb))
        except OperationError as e:
            if e.errno == errno.EINVAL:
                raise
            # vbdev_split_create reports every failure to build a part as -ENOMEM.
            raise OperationError(errno.ENOMEM, str(e)) from None
        return [] if attachment is None else [b.name for b in attachment.bdevs]

    def construct(self, config: SplitConfig, descs: list[Descriptor]) -> list[StackedBdev]:
        base = descs[0].bdev
        if config.split_size_mb:
            if config.split_size_mb * MB % base.block_size:
                log.error("Split size %d MB is not possible with block size %d",
                          config.split_size_mb, base.block_size)
                raise OperationError(errno.EINVAL, f"split size {config.split_size_mb} MB is "
                                                   f"not possible with block size "
                                                   f"{base.block_size}")
            size = config.split_size_mb * MB // base.block_size
        else:
            size = base.num_blocks // config.split_count
        if size == 0:
            raise OperationError(errno.EINVAL, f"{base.name} is too small for "
                                               f"{config.split_count} splits")
        count = min(config.split_count, base.num_blocks // size)
        if count < config.split_count:
            log.warning("Split count %d is greater than maximum possible split count %d - "
                        "clamping", config.split_count, count)
        io_types = base.io_types - PART_EXCLUDED_IO
        parts: list[StackedBdev] = []
        for i in range(count):
            part = SplitBdev(f"{base.name}p{i}", part_uuid(base.uuid, i * size, size),
                             descs[0], offset_blocks=i * size, num_blocks=size,
                             io_types=io_types)
            part.optimal_io_boundary = 0  # a bdev_part does not inherit it
            parts.append(part)
        return parts

    def config_entry(self, config: SplitConfig) -> dict[str, Any]:
        return {"method": "bdev_split_create",
                "params": {"base_bdev": config.base_bdev, "split_count": config.split_count,
                           "split_size_mb": config.split_size_mb}}

    async def delete(self, base_bdev: str) -> None:
        """Remove the parts of ``base_bdev`` and its config; -2 when it has none."""
        config = next((c for c in self.configs if c.base_bdev == base_bdev), None)
        if config is None:
            log.error("Split configuration for '%s' not found", base_bdev)
            raise OperationError(errno.ENOENT, f"no split configuration for {base_bdev}")
        await self.remove(config)



class SplitCreateParams(Params):
    base_bdev: Str
    split_count: U32
    split_size_mb: U64 = 0


@RPC.method("bdev_split_create", SplitCreateParams,
            result={"type": "array", "items": {"type": "string"}})
def bdev_split_create(module: SplitModule, p: SplitCreateParams) -> list[str]:
    """Split a base bdev into equal parts (deferred until it exists); the part names."""
    try:
        return module.create(p.base_bdev, p.split_count, p.split_size_mb)
    except OperationError as e:
        raise RpcError(INVALID_PARAMS, f"Failed to create {p.split_count} split bdevs from "
                                       f"'{p.base_bdev}': {e}") from None


class SplitDeleteParams(Params):
    base_bdev: Str


@RPC.method("bdev_split_delete", SplitDeleteParams, result={"type": "boolean"})
async def bdev_split_delete(module: SplitModule, p: SplitDeleteParams) -> bool:
    """Delete the split bdevs of a base and its split config."""
    try:
        await module.delete(p.base_bdev)
    except OperationError as e:
        raise RpcError(INVALID_PARAMS, str(e)) from None
    return True
