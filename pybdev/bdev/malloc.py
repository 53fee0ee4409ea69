"""malloc: a bdev in RAM (zero-filled), with every I/O type (SPDK's module/bdev/malloc).

The memory is an anonymous private ``mmap``: the kernel hands out zero-filled pages on
first touch, so creating even a 16 GiB bdev is O(1) and never holds the event loop (a
``bytearray`` of that size is zero-filled up front: seconds of a frozen target). Memory is
used as blocks are written; unmap and write-zeroes give whole pages back to the kernel
(``MADV_DONTNEED``, after which they read as zeros). Deleting the bdev unmaps it, once no
read view is still held by an export.

Reads hand out views of the bdev's memory (``ReadBuffer.HELD``), so a 4 KiB read costs no
copy until the consumer sends it.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from typing import TYPE_CHECKING, Any

from pybdev.bdev.core import Bdev, BdevModule, Callback, ReadBuffer
from pybdev.errors import OperationError
from pybdev.rpc.errors import DECODE_FAILED, INTERNAL_ERROR
from pybdev.rpc.registry import RpcTable
from pybdev.rpc.types import I32, U32, U64, NameParams, Params, Str, Uuid

RPC = RpcTable()

if TYPE_CHECKING:
    from pybdev.bdev.core import BdevLayer

MD_SIZES = (0, 8, 16, 32, 64, 128)
ZEROS = bytes(1 << 20)
PAGE = mmap.PAGESIZE
_EMPTY = mmap.mmap(-1, PAGE)  # what a destroyed bdev holds instead of its memory


class MallocBdev(Bdev):
    product_name = "Malloc disk"
    module_name = "malloc"
    fua_native = True  # a write is in the bdev's memory when it completes
    read_buffer = ReadBuffer.HELD  # views of the bdev's memory (it outlives them)
    completes_inline = True

    def __init__(self, name: str, block_size: int, num_blocks: int, uuid: str | None,
                 physical_block_size: int, optimal_io_boundary: int, numa_id: int) -> None:
        super().__init__(
            name, block_size, num_blocks, uuid,
            io_types=frozenset(("read", "write", "flush", "reset", "unmap", "write_zeroes",
                                "zcopy", "abort", "compare", "copy")),
            physical_block_size=physical_block_size, write_cache=True,
            optimal_io_boundary=optimal_io_boundary, numa_id=numa_id,
        )
        try:
            self.memory = mmap.mmap(-1, block_size * num_blocks,
                                    flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except (OSError, MemoryError, OverflowError):
            raise OperationError(errno.ENOMEM, "cannot allocate the malloc bdev") from None
        self.view = memoryview(self.memory)

    def submit_read(self, offset: int, length: int, cb: Callback) -> None:
        cb(0, self.view[offset:offset + length])

    def submit_write(self, offset: int, data: Any, cb: Callback, fua: bool) -> None:
        self.view[offset:offset + len(data)] = data
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

    def config_params(self) -> dict[str, Any]:
        return {
            "name": self.name, "num_blocks": self.num_blocks, "block_size": self.block_size,
            "physical_block_size": self.physical_block_size, "uuid": self.uuid,
            "optimal_io_boundary": self.optimal_io_boundary, "md_size": 0, "dif_type": 0,
            "dif_is_head_of_md": False, "dif_pi_format": 0, "numa_id": self.numa_id,
        }


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
               optimal_io_boundary: int = 0, md_size: int = 0, dif_type: int = 0,
               numa_id: int = -1) -> MallocBdev:
        """Create and register a malloc bdev; raises OperationError as SPDK fails."""
        if num_blocks == 0:
            raise OperationError(errno.EINVAL, "num_blocks must be greater than 0")
        if block_size % 512:
            raise OperationError(errno.EINVAL, "block_size must be a multiple of 512")
        if physical_block_size % 512:
            raise OperationError(errno.EINVAL, "physical_block_size must be a multiple of 512")
        if not numa_node_exists(numa_id):
            raise OperationError(errno.EINVAL, f"NUMA node {numa_id} does not exist")
        if md_size not in MD_SIZES:
            raise OperationError(errno.EINVAL, f"md_size must be one of {MD_SIZES}")
        if md_size or dif_type:
            raise OperationError(errno.EOPNOTSUPP, "pybdev has no metadata/DIF support")
        if name is None:
            name = f"Malloc{self.next_index}"
            self.next_index += 1
        bdev = MallocBdev(name, block_size, num_blocks, uuid, physical_block_size,
                          optimal_io_boundary, numa_id)
        self.layer.register(bdev)
        return bdev

    def write_config(self) -> list[Any]:
        batch = [{"method": "bdev_malloc_create", "params": b.config_params()}
                 for b in self.layer if isinstance(b, MallocBdev)]
        return [batch]




class MallocCreateParams(Params):
    name: Str | None = None
    block_size: U32
    num_blocks: U64
    uuid: Uuid | None = None
    optimal_io_boundary: U32 = 0
    md_size: U32 = 0
    md_interleave: bool = False
    dif_type: I32 = 0
    dif_is_head_of_md: bool = False
    physical_block_size: U32 = 0
    dif_pi_format: U32 = 0
    numa_id: I32 = -1


@RPC.method("bdev_malloc_create", MallocCreateParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "string"},
            aliases=("construct_malloc_bdev",))
def bdev_malloc_create(module: MallocModule, p: MallocCreateParams) -> str:
    """Create a RAM bdev of ``num_blocks`` x ``block_size``; answers its name."""
    module = module
    return module.create(
        name=p.name, block_size=p.block_size, num_blocks=p.num_blocks, uuid=p.uuid,
        physical_block_size=p.physical_block_size, optimal_io_boundary=p.optimal_io_boundary,
        md_size=p.md_size, dif_type=p.dif_type, numa_id=p.numa_id,
    ).name



@RPC.method("bdev_malloc_delete", NameParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "boolean"},
            aliases=("delete_malloc_bdev",))
async def bdev_malloc_delete(module: MallocModule, p: NameParams) -> bool:
    """Delete a malloc bdev (and whatever is stacked on it)."""
    await module.layer.unregister_by_name(p.name, "malloc")
    return True
