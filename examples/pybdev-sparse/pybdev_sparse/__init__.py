"""pybdev-sparse: a thin-provisioned RAM bdev, as a pybdev plugin.

Blocks that were never written (or were unmapped or zeroed) take no memory: a read of one
answers zeros, and block status reports it as a hole. The whole plugin is this file plus
``cli.py``; pybdev finds it through the entry point ``pybdev.modules`` in pyproject.toml.
"""

from __future__ import annotations

import errno
from typing import Any

from pybdev.assembly import Plugin
from pybdev.bdev.core import Bdev, BdevLayer, BdevModule, Callback, ReadBuffer
from pybdev.errors import OperationError
from pybdev.rpc.errors import DECODE_FAILED, INTERNAL_ERROR
from pybdev.rpc.registry import RpcTable
from pybdev.rpc.types import U32, U64, NameParams, Params, Str

# NBD_STATE_HOLE | NBD_STATE_ZERO: the extent flags of a never-written range.
HOLE = 3

RPC = RpcTable()


class SparseBdev(Bdev):
    product_name = "Sparse RAM disk"
    module_name = "sparse"
    reports_holes = True  # get_block_status below knows which blocks were never written
    read_buffer = ReadBuffer.HELD  # every read gets a bytes object of its own

    def __init__(self, name: str, num_blocks: int, block_size: int) -> None:
        super().__init__(name, block_size, num_blocks, io_types=frozenset(
            ("read", "write", "flush", "reset", "unmap", "write_zeroes")))
        self.blocks: dict[int, bytes] = {}

    def submit_read(self, offset: int, length: int, cb: Callback) -> None:
        # The layer checked range and alignment, so offset and length are whole blocks.
        bs = self.block_size
        zero = bytes(bs)
        first = offset // bs
        cb(0, b"".join(self.blocks.get(first + i, zero) for i in range(length // bs)))

    def submit_write(self, offset: int, data: Any, cb: Callback, fua: bool) -> None:
        bs = self.block_size
        first = offset // bs
        view = memoryview(data)
        for i in range(len(view) // bs):
            block = bytes(view[i * bs:(i + 1) * bs])
            if block.count(0) == bs:
                self.blocks.pop(first + i, None)
            else:
                self.blocks[first + i] = block
        cb(0, None)

    def submit_unmap(self, offset: int, length: int, cb: Callback) -> None:
        bs = self.block_size
        for block in range(offset // bs, (offset + length) // bs):
            self.blocks.pop(block, None)
        cb(0, None)

    submit_write_zeroes = submit_unmap

    def get_block_status(self, offset: int, length: int, cb: Callback) -> None:
        """Extents ``(length, flags)`` from ``offset``: stored blocks are data, others holes."""
        bs = self.block_size
        extents: list[tuple[int, int]] = []
        for block in range(offset // bs, (offset + length) // bs):
            flags = 0 if block in self.blocks else HOLE
            if extents and extents[-1][1] == flags:
                extents[-1] = (extents[-1][0] + bs, flags)
            else:
                extents.append((bs, flags))
        cb(0, extents)

    def driver_specific(self) -> dict[str, Any]:
        return {"sparse": {"blocks_stored": len(self.blocks)}}


class SparseModule(BdevModule):
    name = "sparse"
    rpc = RPC

    def __init__(self, layer: BdevLayer) -> None:
        super().__init__(layer)

    def create(self, name: str, num_blocks: int, block_size: int) -> SparseBdev:
        if num_blocks == 0 or block_size % 512:
            raise OperationError(errno.EINVAL,
                                 "num_blocks must be > 0 and block_size a multiple of 512")
        bdev = SparseBdev(name, num_blocks, block_size)
        self.layer.register(bdev)
        return bdev

    def bdev(self, name: str) -> SparseBdev:
        bdev = self.layer.get(name)
        if not isinstance(bdev, SparseBdev):
            raise OperationError(errno.ENODEV, f"no sparse bdev named {name}")
        return bdev

    def write_config(self) -> list[Any]:
        # One create per bdev: what save_config writes and --json replays. Data is in RAM
        # only, like malloc's, so a restart gives an empty bdev of the same shape.
        return [{"method": "bdev_sparse_create",
                 "params": {"name": b.name, "num_blocks": b.num_blocks,
                            "block_size": b.block_size}}
                for b in self.layer if isinstance(b, SparseBdev)]


class SparseCreateParams(Params):
    name: Str
    num_blocks: U64
    block_size: U32 = 512


DECODE_ERROR = (INTERNAL_ERROR, DECODE_FAILED)


@RPC.method("bdev_sparse_create", SparseCreateParams, decode_error=DECODE_ERROR,
            result={"type": "string"})
def bdev_sparse_create(module: SparseModule, p: SparseCreateParams) -> str:
    """Create a sparse RAM bdev of ``num_blocks`` x ``block_size``; answers its name."""
    return module.create(p.name, p.num_blocks, p.block_size).name


@RPC.method("bdev_sparse_delete", NameParams, decode_error=DECODE_ERROR,
            result={"type": "boolean"})
async def bdev_sparse_delete(module: SparseModule, p: NameParams) -> bool:
    """Delete a sparse bdev (and whatever is stacked on it)."""
    await module.layer.unregister_by_name(p.name, "sparse")
    return True


@RPC.method("bdev_sparse_get_stats", NameParams, decode_error=DECODE_ERROR,
            result={"type": "object"})
def bdev_sparse_get_stats(module: SparseModule, p: NameParams) -> dict[str, int]:
    """How many blocks a sparse bdev stores, and the bytes they take."""
    bdev = module.bdev(p.name)
    return {"blocks_stored": len(bdev.blocks),
            "bytes_stored": len(bdev.blocks) * bdev.block_size}


PLUGIN = Plugin("sparse", bdev_modules=(SparseModule,))
