"""CRC32C (Castagnoli), the NVMe/TCP header and data digest (also DIF guards, accel).

Reflected polynomial 0x82F63B78, initial value and final XOR 0xFFFFFFFF; the digest is
stored little-endian after what it covers (``MAKE_DIGEST_WORD`` in SPDK's
``include/spdk_internal/nvme_tcp.h``).  The standard library has no CRC32C.
:func:`crc32c` is the C extension of the ``crc32c`` package (a dependency of pybdev, with
wheels; SSE4.2/ARMv8 instructions where present) when it imports, ~1000x faster than
Python at 4 KiB (``docs/nvmf.md``, "Digests").  It takes any buffer (bytes, bytearray,
memoryview) without a copy, which ``google-crc32c`` does not.  Without the package,
:func:`crc32c_pure` serves, where two pure-Python methods share the work:

* short input (headers): table-driven "slicing by 8", eight bytes per loop turn;
* long input (data): :class:`pybdev.proto.crc_linear.LinearCrc`, from the CRC's linearity
  over GF(2): 32 big-integer ANDs and ``int.bit_count`` calls, which run in C, with masks
  built once (by doubling, in milliseconds).

``bench/nvme_proto.py`` measures both (numbers in ``docs/nvmf.md``).
"""

from __future__ import annotations

import sys
from typing import Final

from pybdev.proto.crc_linear import LinearCrc, reflect

__all__ = ["IMPLEMENTATION", "crc32c", "crc32c_pure"]

_POLY: Final = 0x82F63B78
_MASK_MIN: Final = 256  # bytes: below this the table loop is as fast
_MAX_BITS: Final = 1 << 20  # masks cover 128 KiB; longer input is done in pieces


def _tables() -> list[list[int]]:
    t0: list[int] = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
        t0.append(crc)
    tables = [t0]
    for _ in range(7):
        tables.append([t0[c & 0xFF] ^ (c >> 8) for c in tables[-1]])
    return tables


_T0, _T1, _T2, _T3, _T4, _T5, _T6, _T7 = _tables()
_LITTLE: Final = sys.byteorder == "little"


def _table_crc(data: bytes | bytearray | memoryview, crc: int) -> int:
    t0, t1, t2, t3, t4, t5, t6, t7 = _T0, _T1, _T2, _T3, _T4, _T5, _T6, _T7
    mv = memoryview(data).cast("B")
    c = crc ^ 0xFFFFFFFF
    start = 0
    if _LITTLE:
        start = (len(mv) >> 3) << 3
        for w in mv[:start].cast("Q"):
            w ^= c
            c = (t7[w & 0xFF] ^ t6[(w >> 8) & 0xFF] ^ t5[(w >> 16) & 0xFF]
                 ^ t4[(w >> 24) & 0xFF] ^ t3[(w >> 32) & 0xFF] ^ t2[(w >> 40) & 0xFF]
                 ^ t1[(w >> 48) & 0xFF] ^ t0[w >> 56])
    for b in mv[start:]:
        c = t0[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


_LINEAR: Final = LinearCrc(32, reflect(_POLY, 32))


def crc32c_pure(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC32C of ``data`` in Python; pass a previous result as ``crc`` to continue."""
    n = len(data) if not isinstance(data, memoryview) else data.nbytes
    if n < _MASK_MIN:
        return _table_crc(data, crc)
    raw = bytes(data) if not isinstance(data, bytes) else data
    step = _MAX_BITS >> 3
    for start in range(0, n, step):
        piece = raw[start:start + step] if n > step else raw
        crc = _LINEAR.reflected(piece, crc) if len(piece) >= _MASK_MIN else _table_crc(piece, crc)
    return crc


try:
    import crc32c as _package
except ImportError:  # the package is a dependency, but a source checkout may lack it
    _package = None  # type: ignore[assignment]

#: "c" (the ``crc32c`` package) or "python"; bench/nvme_proto.py prints it.
IMPLEMENTATION: Final = "python" if _package is None else "c"

if _package is not None:
    _fast = _package.crc32c

    def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
        """CRC32C of ``data``; pass a previous result as ``crc`` to continue over pieces.

        ``crc32c(b"123456789") == 0xE3069283``.
        """
        return _fast(data, crc)
else:
    crc32c = crc32c_pure
