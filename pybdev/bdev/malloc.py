"""malloc: a bdev in RAM (zero-filled), with every I/O type (SPDK's module/bdev/malloc).

The memory is an anonymous private ``mmap``: the kernel hands out zero-filled pages on
first touch, so creating even a 16 GiB bdev is O(1) and never holds the event loop (a
``bytearray`` of that size is zero-filled up front: seconds of a frozen target). Memory is
used as blocks are written; unmap and write-zeroes give whole pages back to the kernel
(``MADV_DONTNEED``, after which they read as zeros). Deleting the bdev unmaps it, once no
read view is still held by an export.

Reads hand out views of the bdev's memory (``ReadBuffer.HELD``), so a 4 KiB read costs no
copy until the consumer sends it.

Metadata (``md_size``): interleaved (``md_interleave``) it is part of each block, whose size
is then ``block_size + md_size``; separate, it lives in a second mapping and moves through
``Descriptor.read_md``/``write_md``. With ``dif_type`` 1-3 the bdev is a
:class:`MallocDifBdev`, which checks protection information as SPDK's malloc does: a
write's PI before it is stored, a read's before it completes, -EIO on a mismatch (see
``pybdev/bdev/dif.py`` and docs/guide.md). Bdevs without DIF keep the plain, unchecked path.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import mmap
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import Field

from pybdev.bdev import dif
from pybdev.bdev.core import Bdev, BdevModule, Callback, ReadBuffer
from pybdev.errors import OperationError
from pybdev.rpc.errors import DECODE_FAILED, INTERNAL_ERROR
from pybdev.rpc.registry import RpcTable
from pybdev.rpc.types import I32, U32, U64, NameParams, Params, Str, Uuid

RPC = RpcTable()

if TYPE_CHECKING:
    from pybdev.bdev.core import BdevLayer

log = logging.getLogger("pybdev.bdev.malloc")

MD_SIZES = (0, 8, 16, 32, 64, 128)
ZEROS = bytes(1 << 20)
PAGE = mmap.PAGESIZE
HUGE_PAGE = 2 << 20
HUGEPAGE_ADVICE: int | None = getattr(mmap, "MADV_HUGEPAGE", None)
_EMPTY = mmap.mmap(-1, PAGE)  # what a destroyed bdev holds instead of its memory
# A DIF bdev's PI is written over its memory in pieces this large; the create RPC yields to
# the event loop between them.
FORMAT_CHUNK = 64 << 20


def _anonymous(size: int) -> mmap.mmap:
    try:
        memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, MemoryError, OverflowError):
        raise OperationError(errno.ENOMEM, "cannot allocate the malloc bdev") from None
    if size >= HUGE_PAGE and HUGEPAGE_ADVICE is not None:
        # Transparent huge pages where the kernel offers them on request (its default,
        # "madvise"): a 4 KiB copy to a random place of a 1 GiB bdev misses the TLB
        # far less (docs/decisions/nbd-fast-paths.md). SPDK's malloc lives in hugepages
        # too. Without THP the advice fails and small pages serve as before.
        with contextlib.suppress(OSError):
            memory.madvise(HUGEPAGE_ADVICE)
    return memory


def fill_pattern(view: memoryview, start: int, end: int, pattern: bytes,
                 chunk: int = 1 << 62) -> Iterator[None]:
    """Repeat ``pattern`` over ``view[start:end]`` by doubling copies; yields after each
    ``chunk`` bytes, so a caller can give the event loop a turn."""
    n = len(pattern)
    if end <= start:
        return
    view[start:start + n] = pattern
    done = n
    total = end - start
    since = 0
    while done < total:
        k = min(done, total - done, max(chunk, n) // n * n)
        view[start + done:start + done + k] = view[start:start + k]
        done += k
        since += k
        if since >= chunk:
            since = 0
            yield


class MallocBdev(Bdev):
    product_name = "Malloc disk"
    module_name = "malloc"
    fua_native = True  # a write is in the bdev's memory when it completes
    read_buffer = ReadBuffer.HELD  # views of the bdev's memory (it outlives them)
    thread_safe_submit = True  # a memcpy inside the call: ublk serves it on its queue thread
    completes_inline = True

    def __init__(self, name: str, block_size: int, num_blocks: int, uuid: str | None,
                 physical_block_size: int, optimal_io_boundary: int, numa_id: int,
                 md_size: int = 0, md_interleave: bool = False, dif_type: int = 0,
                 dif_is_head_of_md: bool = False, dif_pi_format: int = 0) -> None:
        data_block_size = block_size
        if md_interleave:
            block_size += md_size
        super().__init__(
            name, block_size, num_blocks, uuid,
            io_types=frozenset(("read", "write", "flush", "reset", "unmap", "write_zeroes",
                                "zcopy", "abort", "compare", "copy")),
            # SPDK's layer fills a missing physical size with the *data* block size.
            physical_block_size=physical_block_size or data_block_size, write_cache=True,
            optimal_io_boundary=optimal_io_boundary, numa_id=numa_id,
        )
        if md_size:
            self.md_size = md_size
            self.md_interleave = md_interleave
        # SPDK keeps what it was given even where it means nothing (no DIF): saved as given.
        self.dif_type = dif_type
        self.dif_is_head_of_md = dif_is_head_of_md
        self.dif_pi_format = dif_pi_format
        self.dif_check_flags = dif.check_flags(dif_type)
        self.memory = _anonymous(block_size * num_blocks)
        self.view = memoryview(self.memory)
        self.md_memory = _EMPTY
        self.md_view = memoryview(b"")
        if md_size and not md_interleave:
            self.md_memory = _anonymous(md_size * num_blocks)
            self.md_view = memoryview(self.md_memory)

    def submit_read(self, offset: int, length: int, cb: Callback) -> None:
        cb(0, self.view[offset:offset + length])

    def submit_write(self, offset: int, data: Any, cb: Callback, fua: bool) -> None:
        self.view[offset:offset + len(data)] = data
        cb(0, None)

    def zcopy_buffer(self, offset: int, length: int) -> memoryview | None:
        return self.view[offset:offset + length]

    def submit_zcopy_commit(self, offset: int, length: int, cb: Callback, fua: bool) -> None:
        cb(0, None)  # the payload is already in the bdev's memory

    def _md_range(self, offset: int, length: int) -> tuple[int, int]:
        bs = self.block_size
        return offset // bs * self.md_size, length // bs * self.md_size

    def submit_read_md(self, offset: int, length: int, cb: Callback) -> None:
        at, n = self._md_range(offset, length)
        cb(0, (self.view[offset:offset + length], self.md_view[at:at + n]))

    def submit_write_md(self, offset: int, data: Any, md: Any, cb: Callback, fua: bool) -> None:
        at, n = self._md_range(offset, len(data))
        self.view[offset:offset + len(data)] = data
        self.md_view[at:at + n] = md
        cb(0, None)

    def _zero(self, offset: int, length: int) -> None:
        end = offset + length
        # Whole pages go back to the kernel and read as zeros again; the edges are written.
        first = -(-offset // PAGE) * PAGE
        last = end // PAGE * PAGE
        if last - first >= PAGE:
            self.memory.madvise(mmap.MADV_DONTNEED, first, last - first)
            self._write_zeros(offset, first)
            self._write_zeros(last, end)
        else:
            self._write_zeros(offset, end)

    def _write_zeros(self, offset: int, end: int) -> None:
        while offset < end:
            n = min(end - offset, len(ZEROS))
            self.view[offset:offset + n] = ZEROS[:n]
            offset += n

    def submit_unmap(self, offset: int, length: int, cb: Callback) -> None:
        self._zero(offset, length)
        cb(0, None)

    def submit_write_zeroes(self, offset: int, length: int, cb: Callback) -> None:
        self._zero(offset, length)
        cb(0, None)

    async def destruct(self) -> None:
        self.view.release()
        # BufferError: an export still holds a view of a read being sent; the mapping
        # then goes with the last view (mmap's dealloc unmaps it).
        with contextlib.suppress(BufferError):
            self.memory.close()
        self.view = memoryview(b"")
        self.memory = _EMPTY
        if self.md_memory is not _EMPTY:
            self.md_view.release()
            with contextlib.suppress(BufferError):
                self.md_memory.close()
            self.md_view = memoryview(b"")
            self.md_memory = _EMPTY

    def config_params(self) -> dict[str, Any]:
        # SPDK writes blocklen (data + interleaved metadata) and no md_interleave, which
        # its own create would read as a 520-byte data block and refuse; pybdev writes the
        # data block size and md_interleave, so the config replays to the same bdev.
        out = {
            "name": self.name, "num_blocks": self.num_blocks,
            "block_size": self.data_block_size,
            "physical_block_size": self.physical_block_size, "uuid": self.uuid,
            "optimal_io_boundary": self.optimal_io_boundary, "md_size": self.md_size,
            "dif_type": self.dif_type, "dif_is_head_of_md": self.dif_is_head_of_md,
            "dif_pi_format": self.dif_pi_format, "numa_id": self.numa_id,
        }
        if self.md_interleave:
            out["md_interleave"] = True
        return out

    def format_steps(self) -> Iterator[None]:
        """Format the memory as created (nothing to do without DIF); yields between pieces."""
        return iter(())


class MallocDifBdev(MallocBdev):
    """A malloc bdev with protection information (``dif_type`` 1-3), checked as SPDK does.

    Writes are verified before they are stored and reads before they complete (the
    reference tag expected is the LBA); a mismatch completes the I/O with -EIO and
    changes nothing. Unmap and write-zeroes leave formatted blocks: zeros with the PI of
    a zero block (application tag 0xFFFF, so they pass every check until written). With
    separate metadata, plain read/write carry no PI and are not checked (SPDK checks only
    what comes with a metadata buffer).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The format for checks; its reference tag comes with each I/O.
        self.dif_ctx = dif.DifContext(
            self.block_size, self.md_size, self.md_interleave, self.dif_is_head_of_md,
            self.dif_type, self.dif_check_flags, 0, 0xFFFF, 0, self.dif_pi_format)
        self.zero_pi = dif.zero_block_pi(self.dif_ctx)
        # A formatted block (interleaved) or its metadata (separate).
        unit = self.block_size if self.md_interleave else self.md_size
        at = self.dif_ctx.guard_interval
        self.zero_unit = bytes(at) + self.zero_pi + bytes(unit - at - len(self.zero_pi))

    def format_steps(self) -> Iterator[None]:
        if self.md_interleave:
            return fill_pattern(self.view, 0, self.size, self.zero_unit, FORMAT_CHUNK)
        return fill_pattern(self.md_view, 0, self.num_blocks * self.md_size, self.zero_unit,
                            FORMAT_CHUNK)

    def _verify(self, op: str, offset: int, data: Any, md: Any) -> bool:
        lba = offset // self.block_size
        n = len(data) // self.block_size
        err = dif.verify(self.dif_ctx, memoryview(data).cast("B"), n,
                         None if md is None else memoryview(md).cast("B"), lba & 0xFFFFFFFF)
        if err is None:
            return True
        # SPDK's text (_malloc_verify_pi), then what failed.
        log.error("%s: %s: DIF/DIX verify failed: lba %d, num_blocks %d, err_type %d, "
                  "expected %d, actual %d, err_offset %d (%s)", self.name, op, lba, n,
                  err.err_type, err.expected, err.actual, err.offset_blocks, err.describe())
        return False

    def submit_read(self, offset: int, length: int, cb: Callback) -> None:
        data = self.view[offset:offset + length]
        if self.md_interleave and not self._verify("read", offset, data, None):
            cb(-errno.EIO, None)
            return
        cb(0, data)

    def submit_write(self, offset: int, data: Any, cb: Callback, fua: bool) -> None:
        if self.md_interleave and not self._verify("write", offset, data, None):
            cb(-errno.EIO, None)
            return
        self.view[offset:offset + len(data)] = data
        cb(0, None)

    def zcopy_buffer(self, offset: int, length: int) -> memoryview | None:
        return None  # protection information is checked as a write goes by

    def submit_read_md(self, offset: int, length: int, cb: Callback) -> None:
        at, n = self._md_range(offset, length)
        data = self.view[offset:offset + length]
        md = self.md_view[at:at + n]
        if not self._verify("read", offset, data, md):
            cb(-errno.EIO, None)
            return
        cb(0, (data, md))

    def submit_write_md(self, offset: int, data: Any, md: Any, cb: Callback, fua: bool) -> None:
        if not self._verify("write", offset, data, md):
            cb(-errno.EIO, None)
            return
        super().submit_write_md(offset, data, md, cb, fua)

    def _reformat(self, offset: int, length: int) -> None:
        """PI for zeroed blocks (SPDK's malloc_unmap_write_zeroes_generate_pi)."""
        if self.md_interleave:
            for _ in fill_pattern(self.view, offset, offset + length, self.zero_unit):
                pass
            return
        # Separate metadata keeps its bytes; the guard covers zero data and the metadata
        # before the PI, so only blocks whose metadata is zero share one PI.
        ctx = self.dif_ctx
        at, n = self._md_range(offset, length)
        gi, size = ctx.guard_interval, ctx.pi_size
        zero_guard = ctx.guard_fn(bytes(self.block_size), 0)
        setup = dif.DifContext(self.block_size, self.md_size, False, self.dif_is_head_of_md,
                               self.dif_type, self.dif_check_flags | dif.FLAGS_APPTAG_CHECK,
                               dif.REFTAG_IGNORE, 0xFFFF, dif.APPTAG_IGNORE, self.dif_pi_format)
        md = self.md_view
        for base in range(at, at + n, self.md_size):
            head = md[base:base + gi]
            if not any(head):
                md[base + gi:base + gi + size] = self.zero_pi
            else:
                guard = ctx.guard_fn(head, zero_guard)
                md[base + gi:base + gi + size] = setup.pack(guard, 0, dif.REFTAG_IGNORE)

    def submit_unmap(self, offset: int, length: int, cb: Callback) -> None:
        if not self.md_interleave:  # interleaved: the formatted pattern covers every byte
            self._zero(offset, length)
        self._reformat(offset, length)
        cb(0, None)

    def submit_write_zeroes(self, offset: int, length: int, cb: Callback) -> None:
        self.submit_unmap(offset, length, cb)


def numa_node_exists(numa_id: int) -> bool:
    return numa_id == -1 or os.path.isdir(f"/sys/devices/system/node/node{numa_id}") or (
        numa_id == 0 and not os.path.isdir("/sys/devices/system/node"))


class MallocModule(BdevModule):
    name = "malloc"
    rpc = RPC

    def __init__(self, layer: BdevLayer) -> None:
        super().__init__(layer)
        self.next_index = 0

    def create(self, *, name: str | None = None, block_size: int, num_blocks: int,
               uuid: str | None = None, physical_block_size: int = 0,
               optimal_io_boundary: int = 0, md_size: int = 0, md_interleave: bool = False,
               dif_type: int = 0, dif_is_head_of_md: bool = False, dif_pi_format: int = 0,
               numa_id: int = -1) -> MallocBdev:
        """Create and register a malloc bdev; raises OperationError as SPDK fails."""
        bdev = self.build(name=name, block_size=block_size, num_blocks=num_blocks, uuid=uuid,
                          physical_block_size=physical_block_size,
                          optimal_io_boundary=optimal_io_boundary, md_size=md_size,
                          md_interleave=md_interleave, dif_type=dif_type,
                          dif_is_head_of_md=dif_is_head_of_md, dif_pi_format=dif_pi_format,
                          numa_id=numa_id)
        for _ in bdev.format_steps():
            pass
        self.layer.register(bdev)
        return bdev

    def build(self, *, name: str | None, block_size: int, num_blocks: int, uuid: str | None,
              physical_block_size: int, optimal_io_boundary: int, md_size: int,
              md_interleave: bool, dif_type: int, dif_is_head_of_md: bool, dif_pi_format: int,
              numa_id: int) -> MallocBdev:
        """A checked, unformatted, unregistered bdev (SPDK's create_malloc_disk checks)."""
        if num_blocks == 0:
            raise OperationError(errno.EINVAL, "num_blocks must be greater than 0")
        if block_size % 512:
            raise OperationError(errno.EINVAL, "block_size must be a multiple of 512")
        if physical_block_size % 512:
            raise OperationError(errno.EINVAL, "physical_block_size must be a multiple of 512")
        if not numa_node_exists(numa_id):
            raise OperationError(errno.EINVAL, f"NUMA node {numa_id} does not exist")
        if md_size not in MD_SIZES:
            raise OperationError(errno.EINVAL, f"metadata size {md_size} is not supported "
                                               f"(one of {', '.join(map(str, MD_SIZES))})")
        if dif_type:
            # SPDK's malloc_disk_setup_pi: spdk_dif_ctx_init's checks, after allocation.
            dif.DifContext(block_size + md_size if md_interleave else block_size, md_size,
                           md_interleave, dif_is_head_of_md, dif_type, 0,
                           pi_format=dif_pi_format)
        if name is None:
            name = f"Malloc{self.next_index}"
            self.next_index += 1
        elif dif_type and self.layer.get(name) is not None:
            # Before formatting, which a clash would waste (register raises the same).
            raise OperationError(errno.EEXIST, f"bdev name or alias {name} already exists")
        cls = MallocDifBdev if dif_type else MallocBdev
        return cls(name, block_size, num_blocks, uuid, physical_block_size, optimal_io_boundary,
                   numa_id, md_size, md_interleave, dif_type, dif_is_head_of_md, dif_pi_format)

    async def create_async(self, **kwargs: Any) -> MallocBdev:
        """:meth:`create` that gives the event loop a turn while a large DIF bdev is
        formatted (every block gets its PI, as SPDK writes it at creation)."""
        bdev = self.build(**kwargs)
        for _ in bdev.format_steps():
            await asyncio.sleep(0)
        self.layer.register(bdev)
        return bdev

    def write_config(self) -> list[Any]:
        batch = [{"method": "bdev_malloc_create", "params": b.config_params()}
                 for b in self.layer if isinstance(b, MallocBdev)]
        return [batch]




class MallocCreateParams(Params):
    name: Str | None = Field(
        None, description="Name of the new bdev; MallocN (the first free N) when omitted")
    block_size: U32 = Field(description="Data block size in bytes, a multiple of 512")
    num_blocks: U64 = Field(description="Size of the bdev in blocks")
    uuid: Uuid | None = Field(None, description="UUID of the bdev; a random one when omitted")
    optimal_io_boundary: U32 = Field(
        0, description="Optimal I/O boundary reported to consumers, in blocks")
    md_size: U32 = Field(
        0, description="Metadata bytes per block (0, 8, 16, 32, 64 or 128)")
    md_interleave: bool = Field(
        False, description="Metadata inside each block (block_size + md_size) instead of apart")
    dif_type: I32 = Field(0, description="Protection information type: 0 (none), 1, 2 or 3")
    dif_is_head_of_md: bool = Field(
        False, description="Protection information at the start of the metadata")
    physical_block_size: U32 = Field(
        0, description="Physical block size reported to consumers (0: the block size)")
    dif_pi_format: U32 = Field(0, description="Protection information format (as SPDK's)")
    numa_id: I32 = Field(-1, description="NUMA node reported in bdev_get_bdevs (-1: none)")


@RPC.method("bdev_malloc_create", MallocCreateParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "string"},
            aliases=("construct_malloc_bdev",))
async def bdev_malloc_create(module: MallocModule, p: MallocCreateParams) -> str:
    """Create a RAM bdev of ``num_blocks`` x ``block_size``; answers its name.

    ``block_size`` counts data bytes: interleaved metadata adds ``md_size`` to each block.
    """
    bdev = await module.create_async(**p.model_dump())
    return bdev.name



@RPC.method("bdev_malloc_delete", NameParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "boolean"},
            aliases=("delete_malloc_bdev",))
async def bdev_malloc_delete(module: MallocModule, p: NameParams) -> bool:
    """Delete a malloc bdev (and whatever is stacked on it)."""
    await module.layer.unregister_by_name(p.name, "malloc")
    return True
