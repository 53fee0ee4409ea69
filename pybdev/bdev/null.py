"""null: a bdev with no storage behind it (SPDK's module/bdev/null), for benchmarks and tests.

Writes are accepted and discarded. SPDK's null bdev leaves a read's buffer untouched;
our read API hands the consumer a buffer instead of filling one, so a read returns
zeros (a view of a shared zero buffer, valid during the callback, per core's contract).

Metadata (``md_size``) is always interleaved, so the bdev's ``block_size`` is the data
block size plus ``md_size``, as in SPDK. With DIF (``dif_type`` 1-3) the bdev is a
:class:`NullDifBdev`, which does what SPDK's null does: a read returns zero data with
generated protection information (the reference tag is the LBA), a write's PI is verified
and a mismatch fails it with -EIO (nothing is stored either way).
"""

from __future__ import annotations

import errno
import logging
from typing import Any

from pydantic import Field

from pybdev.bdev import dif
from pybdev.bdev.core import Bdev, BdevModule, BdevState, Callback, ReadBuffer
from pybdev.errors import OperationError
from pybdev.rpc.errors import DECODE_FAILED, INTERNAL_ERROR
from pybdev.rpc.registry import RpcTable
from pybdev.rpc.types import I32, U32, U64, NameParams, Params, Str, Uuid

RPC = RpcTable()
log = logging.getLogger("pybdev.bdev.null")

MD_SIZES = (0, 8, 16, 32, 64, 128)
MIB = 1 << 20
# Reads up to this size share one zero buffer; larger ones allocate (rare: exports split).
_ZEROS = bytes(4 * MIB)
_ZERO_VIEW = memoryview(_ZEROS)


class NullBdev(Bdev):
    product_name = "Null disk"
    module_name = "null"
    read_buffer = ReadBuffer.HELD  # a shared zero buffer that never changes
    thread_safe_submit = True  # completes inside the call, touches nothing
    completes_inline = True

    def __init__(self, name: str, block_size: int, num_blocks: int, uuid: str | None, *,
                 physical_block_size: int = 0, md_size: int = 0, dif_type: int = 0,
                 dif_is_head_of_md: bool = False, dif_pi_format: int = 0,
                 preferred_write_granularity: int = 0, preferred_write_alignment: int = 0,
                 optimal_write_size: int = 0, preferred_unmap_granularity: int = 0,
                 preferred_unmap_alignment: int = 0) -> None:
        super().__init__(
            name, block_size + md_size, num_blocks, uuid,
            io_types=frozenset(("read", "write", "write_zeroes", "reset", "abort")),
            # SPDK's layer fills a missing physical size with the *data* block size.
            physical_block_size=physical_block_size or block_size,
            write_cache=False,
        )
        self.md_size = md_size
        self.md_interleave = True  # SPDK's null has no separate metadata
        self.dif_type = dif_type
        self.dif_is_head_of_md = dif_is_head_of_md
        self.dif_pi_format = dif_pi_format
        self.dif_check_flags = dif.check_flags(dif_type)
        self.preferred = {
            "preferred_write_alignment": preferred_write_alignment,
            "preferred_write_granularity": preferred_write_granularity,
            "optimal_write_size": optimal_write_size,
            "preferred_unmap_alignment": preferred_unmap_alignment,
            "preferred_unmap_granularity": preferred_unmap_granularity,
        }

    def submit_read(self, offset: int, length: int, cb: Callback) -> None:
        cb(0, _ZERO_VIEW[:length] if length <= len(_ZEROS) else bytes(length))

    def submit_write(self, offset: int, data: Any, cb: Callback, fua: bool) -> None:
        cb(0, None)

    def submit_write_zeroes(self, offset: int, length: int, cb: Callback) -> None:
        cb(0, None)

    def extra_geometry(self) -> dict[str, Any]:
        return dict(self.preferred)

    def config_params(self) -> dict[str, Any]:
        # SPDK writes the bdev blocklen (data + metadata) as block_size, which its own
        # create would then grow by md_size again; the data block size round-trips.
        return {
            "name": self.name, "num_blocks": self.num_blocks, "block_size": self.data_block_size,
            "physical_block_size": self.physical_block_size, "md_size": self.md_size,
            "dif_type": self.dif_type, "dif_is_head_of_md": self.dif_is_head_of_md,
            "dif_pi_format": self.dif_pi_format, "uuid": self.uuid,
            "preferred_write_granularity": self.preferred["preferred_write_granularity"],
            "preferred_write_alignment": self.preferred["preferred_write_alignment"],
            "optimal_write_size": self.preferred["optimal_write_size"],
            "preferred_unmap_granularity": self.preferred["preferred_unmap_granularity"],
            "preferred_unmap_alignment": self.preferred["preferred_unmap_alignment"],
        }


class NullDifBdev(NullBdev):
    """A null bdev with protection information, as SPDK's bdev_null_submit_request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        ctx = self.dif_ctx = dif.DifContext(
            self.block_size, self.md_size, True, self.dif_is_head_of_md, self.dif_type,
            self.dif_check_flags, 0, 0xFFFF, 0, self.dif_pi_format)
        # Read data is zeros, so every block's guard is the same; only the reference tag
        # (types 1 and 2) changes from block to block.
        self.zero_guard = ctx.guard_fn(bytes(ctx.guard_interval), 0)
        self.read_type3 = None
        if not self.dif_check_flags & dif.FLAGS_REFTAG_CHECK:
            block = bytearray(self.block_size)
            at = ctx.guard_interval
            block[at:at + ctx.pi_size] = ctx.pack(self.zero_guard, 0, 0)
            self.read_type3 = bytes(block)

    def submit_read(self, offset: int, length: int, cb: Callback) -> None:
        bs = self.block_size
        n = length // bs
        if self.read_type3 is not None:
            cb(0, self.read_type3 * n)
            return
        ctx = self.dif_ctx
        buf = bytearray(length)
        lba = (offset // bs) & 0xFFFFFFFF
        at, size, guard, pack = ctx.guard_interval, ctx.pi_size, self.zero_guard, ctx.pack
        for i in range(n):
            pos = i * bs + at
            buf[pos:pos + size] = pack(guard, i, lba)
        cb(0, buf)

    def submit_write(self, offset: int, data: Any, cb: Callback, fua: bool) -> None:
        bs = self.block_size
        lba = offset // bs
        err = dif.verify(self.dif_ctx, memoryview(data).cast("B"), len(data) // bs, None,
                         lba & 0xFFFFFFFF)
        if err is not None:
            log.error("%s: IO DIF verification failed: lba %d, num_blocks %d, err_type %d, "
                      "expected %d, actual %d, err_offset %d (%s)", self.name, lba,
                      len(data) // bs, err.err_type, err.expected, err.actual,
                      err.offset_blocks, err.describe())
            cb(-errno.EIO, None)
            return
        cb(0, None)


class NullModule(BdevModule):
    name = "null"
    rpc = RPC

    def create(self, *, name: str, block_size: int, num_blocks: int, uuid: str | None = None,
               physical_block_size: int = 0, md_size: int = 0, dif_type: int = 0,
               dif_is_head_of_md: bool = False, dif_pi_format: int = 0,
               preferred_write_granularity: int = 0, preferred_write_alignment: int = 0,
               optimal_write_size: int = 0, preferred_unmap_granularity: int = 0,
               preferred_unmap_alignment: int = 0) -> NullBdev:
        """Create and register a null bdev; raises OperationError as SPDK fails (-22, -17)."""
        if md_size not in MD_SIZES:
            raise OperationError(errno.EINVAL, f"metadata size {md_size} is not supported "
                                               f"(one of {', '.join(map(str, MD_SIZES))})")
        if block_size % 512:
            raise OperationError(errno.EINVAL, "block_size must be a multiple of 512")
        if physical_block_size % 512:
            raise OperationError(errno.EINVAL, "physical_block_size must be a multiple of 512")
        if num_blocks == 0:
            raise OperationError(errno.EINVAL, "num_blocks must be greater than 0")
        if dif_type:
            # SPDK's _bdev_validate_dif_config: spdk_dif_ctx_init on the interleaved format.
            try:
                dif.DifContext(block_size + md_size, md_size, True, dif_is_head_of_md, dif_type,
                               0, pi_format=dif_pi_format)
            except OperationError as e:
                raise OperationError(errno.EINVAL,
                                     f"DIF configuration was wrong: {e.detail}") from None
        cls = NullDifBdev if dif_type else NullBdev
        bdev = cls(
            name, block_size, num_blocks, uuid, physical_block_size=physical_block_size,
            md_size=md_size, dif_type=dif_type, dif_is_head_of_md=dif_is_head_of_md,
            dif_pi_format=dif_pi_format, preferred_write_granularity=preferred_write_granularity,
            preferred_write_alignment=preferred_write_alignment,
            optimal_write_size=optimal_write_size,
            preferred_unmap_granularity=preferred_unmap_granularity,
            preferred_unmap_alignment=preferred_unmap_alignment,
        )
        self.layer.register(bdev)
        return bdev

    async def delete(self, name: str) -> None:
        """Unregister a null bdev (-19 if ``name`` is not one); returns once it is gone."""
        await self.layer.unregister_by_name(name, self.name)

    def resize(self, name: str, new_size_mib: int) -> None:
        """Grow a null bdev to ``new_size_mib`` MiB; shrinking is -22, as in SPDK."""
        bdev = self.layer.get(name)
        if bdev is None or bdev.state is not BdevState.REGISTERED:
            raise OperationError(errno.ENODEV, f"bdev {name} not found")
        if not isinstance(bdev, NullBdev):
            raise OperationError(errno.EINVAL, f"bdev {name} is not a null bdev")
        if new_size_mib < bdev.size // MIB:
            raise OperationError(errno.EINVAL,
                                 "the new size must not be smaller than the current size")
        num_blocks = new_size_mib * MIB // bdev.block_size
        if num_blocks == bdev.num_blocks:
            return
        if num_blocks < bdev.num_blocks and bdev.descriptors:
            # SPDK's spdk_bdev_notify_blockcnt_change refuses to shrink an open bdev.
            raise OperationError(errno.EBUSY, f"bdev {name} is open; it cannot shrink")
        self.layer.resize(bdev, num_blocks)

    def write_config(self) -> list[Any]:
        batch = [{"method": "bdev_null_create", "params": b.config_params()}
                 for b in self.layer if isinstance(b, NullBdev)]
        return [batch]





class NullCreateParams(Params):
    name: Str = Field(description="Name of the new bdev")
    block_size: U32 = Field(description="Block size in bytes")
    num_blocks: U64 = Field(description="Size of the bdev in blocks")
    uuid: Uuid | None = Field(None, description="UUID of the bdev; a random one when omitted")
    physical_block_size: U32 = Field(
        0, description="Physical block size reported to consumers (0: the block size)")
    md_size: U32 = Field(0, description="Interleaved metadata bytes per block, added to block_size")
    dif_type: I32 = Field(0, description="Protection information type: 0 (none), 1, 2 or 3")
    dif_pi_format: U32 = Field(0, description="Protection information format (as SPDK's)")
    dif_is_head_of_md: bool = Field(
        False, description="Protection information at the start of the metadata")
    preferred_write_granularity: U32 = Field(
        0, description="Reported in bdev_get_bdevs, in blocks")
    preferred_write_alignment: U32 = Field(0, description="Reported in bdev_get_bdevs, in blocks")
    optimal_write_size: U32 = Field(0, description="Reported in bdev_get_bdevs, in blocks")
    preferred_unmap_granularity: U32 = 0
    preferred_unmap_alignment: U32 = 0


@RPC.method("bdev_null_create", NullCreateParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "string"},
            aliases=("construct_null_bdev",))
def bdev_null_create(module: NullModule, p: NullCreateParams) -> str:
    """Create a null bdev (writes discarded, reads return zeros); answers its name."""
    return module.create(**p.model_dump()).name



@RPC.method("bdev_null_delete", NameParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "boolean"},
            aliases=("delete_null_bdev",))
async def bdev_null_delete(module: NullModule, p: NameParams) -> bool:
    """Delete a null bdev (and whatever is stacked on it)."""
    await module.delete(p.name)
    return True


class NullResizeParams(Params):
    name: Str = Field(description="Name of the null bdev")
    new_size: U64 = Field(description="New size in MiB (larger than the current one)")


@RPC.method("bdev_null_resize", NullResizeParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "boolean"})
def bdev_null_resize(module: NullModule, p: NullResizeParams) -> bool:
    """Grow a null bdev to ``new_size`` MiB (shrinking is refused)."""
    module.resize(p.name, p.new_size)
    return True
