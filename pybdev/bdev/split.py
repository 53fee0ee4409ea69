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

from pydantic import Field

from pybdev.bdev import dif
from pybdev.bdev.core import Callback, Descriptor
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


class SplitRemapBdev(SplitBdev):
    """A part past the start of a base that checks reference tags (DIF type 1 or 2).

    A host writes PI with the part's LBAs, the base checks its own: SPDK's bdev_part
    rewrites the reference tags on the way down (after checking them against the part's
    LBAs) and back on the way up (``bdev_part_remap_dif``). A copy of the data carries the
    rewritten tags; a mismatch fails the I/O with -EIO.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # As SPDK's part: its own format, whose PI format a part does not copy.
        self.remap_ctx = dif.DifContext(
            self.block_size, self.md_size, self.md_interleave, self.dif_is_head_of_md,
            self.dif_type, self.dif_check_flags, pi_format=self.dif_pi_format)

    def _remap(self, buf: bytearray, md: bytearray | None, lba: int, to: int) -> bool:
        n = len(buf) // self.block_size if md is None else len(md) // self.md_size
        err = dif.remap_ref_tags(self.remap_ctx, memoryview(buf), n,
                                 None if md is None else memoryview(md), lba, to)
        if err is None:
            return True
        log.error("%s: Remapping reference tag failed. type=%d, offset=%d", self.name,
                  err.err_type, err.offset_blocks)
        return False

    def submit_write(self, offset: int, data: Any, cb: Callback, fua: bool) -> None:
        lba = offset // self.block_size
        buf = bytearray(data)
        if not self.md_interleave or self._remap(buf, None, lba, lba + self.offset_blocks):
            super().submit_write(offset, buf, cb, fua)
        else:
            cb(-errno.EIO, None)

    def submit_read(self, offset: int, length: int, cb: Callback) -> None:
        if not self.md_interleave:  # separate metadata: no PI comes with a plain read
            super().submit_read(offset, length, cb)
            return
        lba = offset // self.block_size

        def done(status: int, data: Any) -> None:
            if status:
                cb(status, None)
                return
            buf = bytearray(data)
            if self._remap(buf, None, lba + self.offset_blocks, lba):
                cb(0, buf)
            else:
                cb(-errno.EIO, None)

        super().submit_read(offset, length, done)

    def submit_write_md(self, offset: int, data: Any, md: Any, cb: Callback, fua: bool) -> None:
        lba = offset // self.block_size
        meta = bytearray(md)
        if self._remap(bytearray(), meta, lba, lba + self.offset_blocks):
            super().submit_write_md(offset, data, meta, cb, fua)
        else:
            cb(-errno.EIO, None)

    def submit_read_md(self, offset: int, length: int, cb: Callback) -> None:
        lba = offset // self.block_size

        def done(status: int, got: Any) -> None:
            if status:
                cb(status, None)
                return
            meta = bytearray(got[1])
            if self._remap(bytearray(), meta, lba + self.offset_blocks, lba):
                cb(0, (got[0], meta))
            else:
                cb(-errno.EIO, None)

        super().submit_read_md(offset, length, done)


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
        remaps = bool(base.md_size and base.dif_check_flags & dif.FLAGS_REFTAG_CHECK)
        for i in range(count):
            cls = SplitRemapBdev if remaps and i else SplitBdev
            part = cls(f"{base.name}p{i}", part_uuid(base.uuid, i * size, size),
                       descs[0], offset_blocks=i * size, num_blocks=size, io_types=io_types)
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
    base_bdev: Str = Field(description="The bdev to split; it may be created later")
    split_count: U32 = Field(description="Number of parts")
    split_size_mb: U64 = Field(
        0, description="Size of each part in MiB (0: the base divided by split_count)")


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
    base_bdev: Str = Field(description="The bdev whose parts are deleted")


@RPC.method("bdev_split_delete", SplitDeleteParams, result={"type": "boolean"})
async def bdev_split_delete(module: SplitModule, p: SplitDeleteParams) -> bool:
    """Delete the split bdevs of a base and its split config."""
    try:
        await module.delete(p.base_bdev)
    except OperationError as e:
        raise RpcError(INVALID_PARAMS, str(e)) from None
    return True
