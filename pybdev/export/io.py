"""One translation from a protocol request to the bdev descriptor call.

Each protocol maps its own opcodes to these operations with a table next to its wire
constants (``NBD_OPS`` in :mod:`pybdev.nbd.export`, ``UBLK_OPS`` in
:mod:`pybdev.ublk.target`) and calls :func:`submit`; what an operation means for the bdev
is decided here once:

* FLUSH flushes the whole bdev (NBD and ublk flushes carry no range);
* FUA goes with every write-type operation (the bdev layer honours or emulates it);
* an operation the bdev layer has no call for completes with ``-EOPNOTSUPP``, which the
  status tables (:mod:`pybdev.export.status`) turn into each protocol's "not supported".

Plain ``int`` constants and an ``if`` chain: this runs once per request.  The network NBD
server keeps READ and WRITE inlined in its batch loop (measured, see
docs/decisions/nbd-server-design.md) and uses this for the other operations.
"""

from __future__ import annotations

import errno
from typing import Any, Final

from pybdev.bdev.core import Callback, Descriptor

READ: Final = 0
WRITE: Final = 1
FLUSH: Final = 2
UNMAP: Final = 3
WRITE_ZEROES: Final = 4
UNSUPPORTED: Final = -1

NAMES: Final = {READ: "read", WRITE: "write", FLUSH: "flush", UNMAP: "unmap",
                WRITE_ZEROES: "write_zeroes"}


def submit(desc: Descriptor, op: int, offset: int, length: int, payload: Any, fua: bool,
           cb: Callback) -> None:
    """Start ``op`` on ``desc``; ``cb(status, data)`` completes it, perhaps inside the call."""
    if op == READ:
        desc.read(offset, length, cb)
    elif op == WRITE:
        desc.write(offset, payload, cb, fua)
    elif op == FLUSH:
        desc.flush(0, desc.bdev.size, cb)
    elif op == UNMAP:
        desc.unmap(offset, length, cb, fua)
    elif op == WRITE_ZEROES:
        desc.write_zeroes(offset, length, cb, fua)
    else:
        cb(-errno.EOPNOTSUPP, None)


def op_table(pairs: dict[int, int], size: int = 256) -> tuple[int, ...]:
    """A protocol's opcode -> operation lookup as a tuple (index, no hashing)."""
    table = [UNSUPPORTED] * size
    for code, op in pairs.items():
        table[code] = op
    return tuple(table)
