"""The guard CRCs of protection information that the standard library lacks, in pure Python.

CRC-16/T10-DIF (the 16-bit guard) and CRC-64/NVME (the 64-bit guard), as SPDK's
``spdk_crc16_t10dif`` and ``spdk_crc64_nvme``; the 32-bit guard is CRC-32C, which
``pybdev.proto.nvme.crc32c`` has. The same two methods as there:

* short input: a byte table;
* a data block (256 bytes and more): a CRC is linear over GF(2), so bit ``k`` of the CRC of a
  message is the parity of (message AND mask_k), where bit ``d`` of mask_k is bit ``k`` of
  ``x^(d + width) mod P``. The masks are built once per width by doubling (the upper half
  of 2D bits is the lower half multiplied by ``x^D``, a width x width matrix), then a CRC
  is ``width`` big-integer ANDs and ``int.bit_count`` calls, which run in C. A seed enters
  as the first ``width`` message bits XORed with it; the reflected CRC-64 works on the
  non-reflected polynomial with bit-reversed bytes and reflects the result back.
"""

from __future__ import annotations

from typing import Final

__all__ = ["crc16_t10dif", "crc64_nvme"]

_MASK_MIN: Final = 256  # bytes: below this the table loop is as fast
_MAX_BITS: Final = 1 << 16  # masks cover 8 KiB (a 4 KiB block and its metadata); longer: pieces
_REV8: Final = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))
_ONES64: Final = (1 << 64) - 1


def _reflect(value: int, width: int) -> int:
    return int(f"{value:0{width}b}"[::-1], 2)


class _Masks:
    """Masks of a non-reflected CRC (polynomial without its x^width term, init 0)."""

    def __init__(self, width: int, poly: int) -> None:
        self.width = width
        self.bits = 1
        self.masks = [(poly >> k) & 1 for k in range(width)]  # x^width mod P
        # Multiplication by x as a matrix of columns (column i: the image of x^i); then
        # always multiplication by x^bits.
        self.power = [1 << (i + 1) if i + 1 < width else poly for i in range(width)]
        self.buckets: dict[int, list[int]] = {}

    def _apply(self, cols: list[int], v: int) -> int:
        y = 0
        i = 0
        while v:
            if v & 1:
                y ^= cols[i]
            v >>= 1
            i += 1
        return y

    def _grow(self, need: int) -> None:
        width = self.width
        while self.bits < need:
            d = self.bits
            cols = self.power
            old = self.masks
            new = []
            for k in range(width):
                part = 0
                for i in range(width):
                    if (cols[i] >> k) & 1:
                        part ^= old[i]
                new.append(old[k] | (part << d))
            self.masks = new
            self.power = [self._apply(cols, c) for c in cols]
            self.bits = 2 * d

    def for_bits(self, nbits: int) -> list[int]:
        size = 1 << (nbits - 1).bit_length()
        masks = self.buckets.get(size)
        if masks is None:
            self._grow(size)
            cut = (1 << size) - 1
            masks = self.buckets[size] = [m & cut for m in self.masks]
        return masks

    def crc(self, message: int, nbits: int) -> int:
        out = 0
        for k, m in enumerate(self.for_bits(nbits)):
            out |= ((message & m).bit_count() & 1) << k
        return out


# ------------------------------------------------------------------------- CRC-16/T10-DIF
_P16: Final = 0x8BB7


def _table16() -> list[int]:
    out = []
    for b in range(256):
        c = b << 8
        for _ in range(8):
            c = ((c << 1) ^ _P16) & 0xFFFF if c & 0x8000 else (c << 1) & 0xFFFF
        out.append(c)
    return out


_T16: Final = _table16()
_M16: Final = _Masks(16, _P16)


def crc16_t10dif(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-16/T10-DIF (poly 0x8BB7, no reflection, no final XOR), as ``spdk_crc16_t10dif``.

    ``crc`` is the seed or a previous result. ``crc16_t10dif(b"123456789") == 0xD0DB``.
    """
    mv = memoryview(data).cast("B")
    n = len(mv)
    if n < _MASK_MIN:
        t = _T16
        for b in mv:
            crc = t[(crc >> 8) ^ b] ^ ((crc << 8) & 0xFFFF)
        return crc
    step = _MAX_BITS >> 3
    for start in range(0, n, step):
        piece = mv[start:start + step]
        if len(piece) < _MASK_MIN:
            return crc16_t10dif(piece, crc)
        nbits = len(piece) << 3
        message = int.from_bytes(piece, "big") ^ (crc << (nbits - 16))
        crc = _M16.crc(message, nbits)
    return crc


# --------------------------------------------------------------------------- CRC-64/NVME
_P64_REFLECTED: Final = 0x9A6C9329AC4BC9B5
_P64: Final = _reflect(_P64_REFLECTED, 64)


def _table64() -> list[int]:
    out = []
    for b in range(256):
        c = b
        for _ in range(8):
            c = (c >> 1) ^ _P64_REFLECTED if c & 1 else c >> 1
        out.append(c)
    return out


_T64: Final = _table64()
_M64: Final = _Masks(64, _P64)


def crc64_nvme(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-64/NVME (reflected poly 0x9A6C9329AC4BC9B5, inverted in and out), as SPDK's.

    ``crc`` is 0 or a previous result. ``crc64_nvme(b"123456789") == 0xAE8B14860A799888``.
    """
    mv = memoryview(data).cast("B")
    n = len(mv)
    if n < _MASK_MIN:
        t = _T64
        c = crc ^ _ONES64
        for b in mv:
            c = t[(c ^ b) & 0xFF] ^ (c >> 8)
        return c ^ _ONES64
    step = _MAX_BITS >> 3
    for start in range(0, n, step):
        piece = mv[start:start + step]
        if len(piece) < _MASK_MIN:
            return crc64_nvme(piece, crc)
        nbits = len(piece) << 3
        message = int.from_bytes(bytes(piece).translate(_REV8), "big")
        message ^= _reflect(crc ^ _ONES64, 64) << (nbits - 64)
        crc = _reflect(_M64.crc(message, nbits), 64) ^ _ONES64
    return crc
