"""CRC32C (Castagnoli), the NVMe/TCP header and data digest, in pure Python.

Reflected polynomial 0x82F63B78, initial value and final XOR 0xFFFFFFFF; the digest is
stored little-endian after what it covers (``MAKE_DIGEST_WORD`` in SPDK's
``include/spdk_internal/nvme_tcp.h``).  The standard library has no CRC32C and pybdev
adds no dependency for it, so this is table-driven "slicing by 8": eight 256-entry
tables, eight bytes per loop turn over ``memoryview.cast("Q")`` words.  Digests are only
computed when the host asks for them (``nvme connect -g/-G``); ``docs/nvmf.md`` has the
measured cost (about 0.3 ms per 4 KiB on an idle core: data digests cap a queue at a few
thousand 4 KiB I/Os per second).
"""

from __future__ import annotations

import sys
from typing import Final

__all__ = ["crc32c"]

_POLY: Final = 0x82F63B78


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


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC32C of ``data``; pass a previous result as ``crc`` to continue over pieces.

    ``crc32c(b"123456789") == 0xE3069283``.
    """
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
