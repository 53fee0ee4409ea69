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
* long input (data): CRC is linear over GF(2), so bit ``k`` of the CRC of a message is
  the parity of (message AND mask_k), where mask_k marks the message bits whose
  contribution has bit ``k`` set.  A contribution depends only on the bit's distance
  from the end of the message, so 32 masks built once (by doubling, in milliseconds)
  serve every length; a CRC is then 32 big-integer ANDs and ``int.bit_count`` calls,
  which run in C.  The initial value's part is a 32x32 matrix per length, cached.

``bench/nvme_proto.py`` measures both (numbers in ``docs/nvmf.md``).
"""

from __future__ import annotations

import sys
from typing import Final

__all__ = ["IMPLEMENTATION", "crc32c", "crc32c_pure"]

_POLY: Final = 0x82F63B78
_MASK_MIN: Final = 256  # bytes: below this the table loop is as fast
_MAX_BITS: Final = 1 << 20  # masks cover 128 KiB; longer input is done in pieces
_REV8: Final = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


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


# ---------------------------------------------------------------------------- masks
# Matrices are lists of 32 column vectors (ints): column i is the image of bit i.


def _matvec(cols: list[int], v: int) -> int:
    y = 0
    i = 0
    while v:
        if v & 1:
            y ^= cols[i]
        v >>= 1
        i += 1
    return y


def _matmul(a: list[int], b: list[int]) -> list[int]:
    return [_matvec(a, col) for col in b]


#: the register advanced over one zero bit
_STEP: Final = [_POLY] + [1 << (i - 1) for i in range(1, 32)]


class _Masks:
    """mask_k bit d = bit k of the register contribution of a 1 bit d bits before the end."""

    def __init__(self) -> None:
        self.bits = 1
        self.masks = [(_POLY >> k) & 1 for k in range(32)]
        self.pow2 = [_STEP]  # A^(2^j): the register advanced over 2^j zero bits
        self.buckets: dict[int, list[int]] = {}
        self.advance: dict[int, list[int]] = {}

    def grow(self, need: int) -> None:
        while self.bits < need:
            d = self.bits
            cols = self.pow2[-1]  # A^d
            old = self.masks
            new = []
            for k in range(32):
                row = sum(((cols[i] >> k) & 1) << i for i in range(32))
                part = 0
                i = 0
                while row:
                    if row & 1:
                        part ^= old[i]
                    row >>= 1
                    i += 1
                new.append(old[k] | (part << d))
            self.masks = new
            self.pow2.append(_matmul(cols, cols))
            self.bits = 2 * d

    def for_bits(self, nbits: int) -> list[int]:
        """The masks cut to the power of two >= nbits (ANDs stay as short as the data)."""
        size = 1 << (nbits - 1).bit_length()
        masks = self.buckets.get(size)
        if masks is None:
            self.grow(size)
            cut = (1 << size) - 1
            masks = self.buckets[size] = [m & cut for m in self.masks]
        return masks

    def advancer(self, nbits: int) -> list[int]:
        cols = self.advance.get(nbits)
        if cols is None:
            self.grow(nbits)
            cols = [1 << i for i in range(32)]
            j = 0
            n = nbits
            while n:
                if n & 1:
                    cols = _matmul(self.pow2[j], cols)
                n >>= 1
                j += 1
            if len(self.advance) > 256:  # lengths are few in practice; stay bounded anyway
                self.advance.clear()
            self.advance[nbits] = cols
        return cols


_MASKS = _Masks()


def _mask_crc(raw: bytes, crc: int) -> int:
    nbits = len(raw) << 3
    # bit-reverse each byte and read big-endian: bit d is then d bits before the end
    x = int.from_bytes(raw.translate(_REV8), "big")
    lin = 0
    for k, m in enumerate(_MASKS.for_bits(nbits)):
        lin |= ((x & m).bit_count() & 1) << k
    return lin ^ _matvec(_MASKS.advancer(nbits), crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def crc32c_pure(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC32C of ``data`` in Python; pass a previous result as ``crc`` to continue."""
    n = len(data) if not isinstance(data, memoryview) else data.nbytes
    if n < _MASK_MIN:
        return _table_crc(data, crc)
    raw = bytes(data) if not isinstance(data, bytes) else data
    step = _MAX_BITS >> 3
    for start in range(0, n, step):
        piece = raw[start:start + step] if n > step else raw
        crc = _mask_crc(piece, crc) if len(piece) >= _MASK_MIN else _table_crc(piece, crc)
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
