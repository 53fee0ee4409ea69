"""The request translation on a real malloc descriptor, and the per-protocol opcode tables."""

from __future__ import annotations

import errno
from typing import Any

from pybdev.bdev.core import BdevLayer
from pybdev.bdev.malloc import MallocModule
from pybdev.export import io
from pybdev.nbd.export import NBD_OPS
from pybdev.proto import nbd as proto
from pybdev.ublk import uapi
from pybdev.ublk.target import UBLK_OPS


def run(desc: Any, op: int, offset: int = 0, length: int = 0, payload: Any = None,
        fua: bool = False) -> tuple[int, Any]:
    out: list[tuple[int, Any]] = []
    io.submit(desc, op, offset, length, payload, fua,
              lambda status, data: out.append((status, None if data is None else bytes(data))))
    assert len(out) == 1
    return out[0]


async def test_every_operation_reaches_the_bdev(layer: BdevLayer) -> None:
    bdev = layer.module(MallocModule).create(name="M0", block_size=512, num_blocks=64)
    desc = layer.open("M0", write=True)
    assert run(desc, io.WRITE, 512, 1024, b"\xab" * 1024, fua=True) == (0, None)
    assert run(desc, io.READ, 512, 1024) == (0, b"\xab" * 1024)
    assert run(desc, io.WRITE_ZEROES, 512, 512)[0] == 0
    assert run(desc, io.READ, 512, 1024) == (0, bytes(512) + b"\xab" * 512)
    assert run(desc, io.UNMAP, 1024, 512)[0] == 0
    assert run(desc, io.FLUSH)[0] == 0  # no range: the whole bdev
    assert run(desc, io.UNSUPPORTED)[0] == -errno.EOPNOTSUPP
    assert run(desc, io.READ, bdev.size, 512)[0] == -errno.EINVAL  # the descriptor checks
    desc.close()


def test_protocol_opcode_tables() -> None:
    assert [NBD_OPS[c] for c in (proto.NBD_CMD_READ, proto.NBD_CMD_WRITE, proto.NBD_CMD_FLUSH,
                                 proto.NBD_CMD_TRIM, proto.NBD_CMD_WRITE_ZEROES)] == [
        io.READ, io.WRITE, io.FLUSH, io.UNMAP, io.WRITE_ZEROES]
    assert NBD_OPS[proto.NBD_CMD_CACHE] == io.UNSUPPORTED  # protocol-only: the server's own
    assert [UBLK_OPS[c] for c in (uapi.UBLK_IO_OP_READ, uapi.UBLK_IO_OP_WRITE,
                                  uapi.UBLK_IO_OP_FLUSH, uapi.UBLK_IO_OP_DISCARD,
                                  uapi.UBLK_IO_OP_WRITE_ZEROES)] == [
        io.READ, io.WRITE, io.FLUSH, io.UNMAP, io.WRITE_ZEROES]
    assert UBLK_OPS[uapi.UBLK_IO_OP_WRITE_SAME] == io.UNSUPPORTED
    assert len(UBLK_OPS) == 256  # any op byte indexes it
